"""A printable tree of a graph: node paths, kinds, parameter shapes and counts."""

from __future__ import annotations

import numpy as np

from .nodes import Node, join
from .params import param_entries


def _count(node: Node) -> int:
    return sum(int(np.prod(e.spec.shape)) for e in param_entries(node))


def summary(graph: Node) -> str:
    """The graph as an indented tree: ``path  kind  [params]  count`` per node, total at the end."""
    lines: list[str] = []

    def visit(node: Node, prefix: str, depth: int) -> None:
        path = join(prefix, node.path)
        label = node.path or "(.)"
        own = ", ".join(f"{s.name}{list(s.shape)}" for s in node.param_specs())
        lines.append(f"{'  ' * depth}{label:<{max(1, 48 - 2 * depth)}} {node.kind:<16} {_count(node):>12,}  {own}")
        for child in node.children():
            visit(child, path, depth + 1)

    visit(graph, "", 0)
    lines.append(f"total parameters: {_count(graph):,}")
    return "\n".join(lines)
