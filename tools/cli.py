"""The ``tandem`` command: ``parity``, ``inspect``, ``bench`` and ``convert``.

Exit codes: 0 success, 1 the backends (or the HF reference) disagree beyond the tolerance, 2 any failure
(bad arguments, a missing path, an invalid config or checkpoint, a missing framework, an unexpected error),
130 interrupted. A failure is one line on stderr, ``tandem <command>: error: <message>``; with ``--json``
it is also ``{"ok": false, "error": {"type": ..., "message": ...}}`` on stdout; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__, build_graph, config_from_hf, summary
from ..core import FAMILIES, Family
from ..core.checkpoint import task_for_checkpoint
from ..core.hub import resolve
from ..core.params import count_params


class UsageError(Exception):
    """Arguments the parser refused; ``prog`` is the (sub)command that refused them."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, raising its errors so that they are reported like every other failure."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tandem", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tandem {__version__} (distribution tandem-encoders)")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parity = commands.add_parser(
        "parity",
        parents=[common],
        help="compare the torch and flax backends (and HF PyTorch) on the same weights and batch",
        description="Without PATH: every family and task at a small size with random weights. With PATH: an HF "
        "checkpoint directory. Exits 1 when any max |diff| exceeds --tol.",
    )
    parity.add_argument(
        "path", nargs="?", help="HF checkpoint directory (config.json + weights in any HF format) or Hub id"
    )
    parity.add_argument(
        "--task", help="with PATH: the task to load it as (default: from its architectures); without: only this task"
    )
    parity.add_argument("--family", choices=sorted(FAMILIES), help="without PATH: only this family")
    parity.add_argument("--tol", type=float, help="largest allowed max |diff| (default 1e-5)")
    parity.add_argument("--batch", type=int, default=2, help="rows of the generated batch (default 2)")
    parity.add_argument("--length", type=int, default=16, help="length of the generated batch (default 16)")
    parity.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    parity.add_argument("--inputs", help="with PATH: an .npz of input_ids [attention_mask, token_type_ids...]")
    parity.add_argument(
        "--texts",
        help="with PATH: a UTF-8 file of sentences, one a line (a tab splits a pair), tokenized with the "
        "checkpoint's tokenizer, padded to the longest and truncated to the model's limit",
    )
    parity.add_argument("--no-reference", action="store_true", help="skip the HF transformers reference")
    parity.add_argument(
        "--include-padding",
        action="store_true",
        help="let the padded positions (attention_mask 0) decide too; by default their max |diff| is reported "
        "apart (the 'padded' column), as nothing reads them",
    )
    parity.add_argument("--json", action="store_true", help="print a JSON report instead of the table")

    inspect = commands.add_parser(
        "inspect", parents=[common], help="print a config, its layer graph and parameter counts"
    )
    inspect.add_argument("path", help="HF checkpoint directory, config.json or Hub id")
    inspect.add_argument("--task", help="task to build (default: from the config's architectures, else base)")
    inspect.add_argument("--json", action="store_true", help="print the config and parameter counts as JSON")

    bench = commands.add_parser(
        "bench", parents=[common], help="bert-base forward: ours vs HF transformers, both backends"
    )
    from .bench import add_arguments

    add_arguments(bench)

    convert = commands.add_parser(
        "convert", parents=[common], help="convert an HF checkpoint for torch or flax, tensor by tensor"
    )
    from .convert import add_arguments as add_convert_arguments

    add_convert_arguments(convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tandem`` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as err:  # the flags are not parsed yet: look for them as written
        return _fail(err.prog, err, "--json" in argv, "--debug" in argv)
    prog = f"tandem {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_: print(f"{prog}: warning: {message}", file=sys.stderr)
        try:
            if args.command == "parity":
                return _parity(args)
            if args.command == "inspect":
                return _inspect(args)
            if args.command == "convert":
                from .convert import run as convert

                return convert(args)
            from .bench import run

            return run(args)
        except BrokenPipeError:  # output piped into `head` and the like: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # every failure, ours or a framework's, ends the same way
            return _fail(prog, err, args.json, args.debug)


def _fail(prog: str, err: BaseException, as_json: bool, debug: bool) -> int:
    """Report ``err`` as one line on stderr (and JSON on stdout); the exit code of a failure."""
    if debug:
        traceback.print_exception(err)
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": {"type": type(err).__name__, "message": message}}))
    return 2


def _require_backends() -> None:
    """Both frameworks, or an ImportError naming the extra to install."""
    from ..backends import load_backend

    load_backend("torch")
    load_backend("flax")


def _parity(args: argparse.Namespace) -> int:
    _require_backends()
    from . import parity

    if args.batch < 1 or args.length < 2:
        raise ValueError(f"need --batch >= 1 and --length >= 2, got {args.batch} and {args.length}")
    if args.path is None and (args.inputs or args.texts):
        raise ValueError(f"{'--inputs' if args.inputs else '--texts'} needs a checkpoint PATH")
    if args.inputs and args.texts:
        raise ValueError("give the batch as --inputs or as --texts, not both")
    if args.path is not None and args.family:
        raise ValueError("--family applies without PATH only")
    tol = parity.TOLERANCE if args.tol is None else args.tol
    with_reference = not args.no_reference and parity.reference_version() is not None
    results = []
    # The small models run on one torch thread (see parity.torch_threads); a checkpoint keeps torch's default.
    threads = parity.torch_threads(1) if args.path is None else contextlib.nullcontext()
    with parity.strict_numerics(), threads:
        if args.path is None:
            for family, task in _small_models(args.family, args.task):
                try:
                    result = parity.small_parity(
                        family, task, args.seed, tol, with_reference, args.batch, args.length, args.include_padding
                    )
                except Exception as err:  # one broken model is a FAIL row; the others still run
                    result = parity.failed(family.name, task, tol, err)
                results.append(result)
                if not args.json:
                    print(f"{family.name} {task}: {'ok' if result.ok else 'FAIL'}", file=sys.stderr)
        else:
            batch = parity.load_batch(args.inputs) if args.inputs else None
            if args.texts:
                from .sentences import texts_batch

                batch = texts_batch(resolve(args.path, argument="path"), args.texts)
            results.append(
                parity.checkpoint_parity(
                    args.path,
                    args.task,
                    batch,
                    args.batch,
                    args.length,
                    args.seed,
                    tol,
                    with_reference,
                    args.include_padding,
                )
            )
    reference = f"transformers {parity.reference_version()}" if with_reference else None
    if args.json:
        print(json.dumps(parity.json_report(results, reference), indent=2))
    else:
        print(parity.format_table(results, reference))
    return 0 if all(r.ok for r in results) else 1


def _small_models(family: str | None, task: str | None) -> list[tuple[Family, str]]:
    """Every (family, task) pair, or those of ``family`` / named ``task``; an error when none is left."""
    families = [FAMILIES[family]] if family else list(FAMILIES.values())
    models = [(f, t) for f in families for t in f.tasks if task in (None, t)]
    if not models:
        raise ValueError(f"no task {task!r} in {', '.join(f.name for f in families)}")
    return models


def _inspect(args: argparse.Namespace) -> int:
    config = config_from_hf(resolve(args.path, weights=False))  # a Hub id: its cached snapshot
    task = args.task or task_for_checkpoint(config) or "base"
    graph = build_graph(config, task)
    backbone = graph.backbone
    parts = [(backbone.path or "(base)", backbone), *[(f"head {h.output}", h) for h in graph.heads]]
    if args.json:
        counts = {label: count_params(node) for label, node in parts}
        report = {"family": graph.family, "task": graph.task, "config": config.to_hf_dict(), "parameters": counts}
        print(json.dumps({**report, "total_parameters": count_params(graph)}, indent=2, sort_keys=True))
        return 0
    print(f"config ({config.model_type}):")
    print(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
    print(f"\ngraph ({graph.family} {graph.task}):")
    print(summary(graph))
    print("\nparameters:")
    for label, node in parts:
        print(f"  {label:<32} {count_params(node):>14,}")
    print(f"  {'total':<32} {count_params(graph):>14,}")
    return 0
