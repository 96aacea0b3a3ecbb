"""Backend adapters. Each is imported only when asked for, so one framework is enough."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> (framework it imports, extra that installs it); NNX ships with flax.
BACKENDS = {"torch": ("torch", "torch"), "flax": ("flax", "flax"), "nnx": ("flax", "flax")}


def load_backend(name: str) -> ModuleType:
    """The adapter module for ``name`` ('torch', 'flax' or 'nnx'); a clear error if its framework is missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    framework, extra = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError as err:
        raise ImportError(
            f"the {name} backend needs {framework}, which is not installed: pip install 'tandem-encoders[{extra}]'"
        ) from err
    return importlib.import_module(f"{__name__}.{name}")
