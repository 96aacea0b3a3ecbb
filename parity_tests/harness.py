"""The parity suite's view of the shared harness, plus what only the suite needs.

The harness itself (the HF reference table, checkpoints, batches, comparisons, gradients) is
:mod:`tandem.tools.harness` and :mod:`tandem.tools.references`, which ``tandem parity`` reuses. Test files
``import harness`` (conftest puts this folder on ``sys.path``) and find here its names, the BERT shortcuts
most of them use and the session checkpoint cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tandem.tools.harness import ATOL as ATOL
from tandem.tools.harness import GRAD_RTOL as GRAD_RTOL
from tandem.tools.harness import MAX_DIFFS as MAX_DIFFS
from tandem.tools.harness import Batch as Batch
from tandem.tools.harness import Case as Case
from tandem.tools.harness import Loaded as Loaded
from tandem.tools.harness import case_batch as case_batch
from tandem.tools.harness import check_parity as check_parity
from tandem.tools.harness import compare as compare
from tandem.tools.harness import compare_grads as compare_grads
from tandem.tools.harness import flatten_outputs as flatten_outputs
from tandem.tools.harness import flax_grads as flax_grads
from tandem.tools.harness import hf_torch_grads as hf_torch_grads
from tandem.tools.harness import load as load
from tandem.tools.harness import make_batch as make_batch
from tandem.tools.harness import max_abs_diff as max_abs_diff
from tandem.tools.harness import nnx_grads as nnx_grads
from tandem.tools.harness import record as record
from tandem.tools.harness import run_case as run_case
from tandem.tools.harness import run_flax as run_flax
from tandem.tools.harness import run_hf_flax as run_hf_flax
from tandem.tools.harness import run_torch as run_torch
from tandem.tools.harness import same_fields as same_fields
from tandem.tools.harness import to_numpy as to_numpy
from tandem.tools.harness import torch_grads as torch_grads
from tandem.tools.references import REFERENCES as REFERENCES
from tandem.tools.references import hf_config as hf_config
from tandem.tools.references import hf_flax_model as hf_flax_model
from tandem.tools.references import make_hf_model as make_hf_model
from tandem.tools.references import quiet as quiet

# BERT, the family most of the suite runs on: its tiny config (2 layers, 3 heads of dim 12, gelu) and its
# encoder tasks (the decoder has test_decoder.py).
TINY: Mapping[str, Any] = REFERENCES["bert"].tiny
TASKS: tuple[str, ...] = tuple(task for task in REFERENCES["bert"].tasks if task != "causal_lm")


class CheckpointCache:
    """One :class:`Loaded` per (family, task, config overrides), made on first use (a session fixture holds it).

    Reusing a loaded flax model reuses its jitted forwards, which keeps JAX compiles (the suite's main cost)
    to one per checkpoint and call signature.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cases: dict[tuple[str, str, tuple[tuple[str, Any], ...]], Loaded] = {}

    def load(self, family: str, task: str, overrides: Mapping[str, Any] | None = None) -> Loaded:
        key = (family, task, tuple(sorted((overrides or {}).items())))
        if key not in self._cases:
            directory = self.root / f"case{len(self._cases)}_{family}_{task}"
            self._cases[key] = load(directory, family, task, overrides)
        return self._cases[key]

    def get(self, task: str, **overrides: Any) -> Loaded:
        """BERT's checkpoint for ``task`` with HF config ``overrides``."""
        return self.load("bert", task, overrides)
