"""Run one model in both backends (and HF PyTorch, when installed) on the same batch and compare.

Everything is compared as numpy float32 over every output a call returns but the KV cache: the task's
logits (or last hidden state and pooled output), each hidden state and each attention map (cross-attention
maps included), keyed ``hidden_states.3``.

Padded positions (``attention_mask == 0``) are compared apart: what a model computes there is never read
(it is masked out of every attention and of every pooling), and there HF's own PyTorch and Flax differ by
1e-4 on real checkpoints, as the order of the fp32 sums over the masked scores decides it. Their difference
is reported (``padded``) but decides the outcome only with ``include_padding``; the rows of a hidden state,
token logits or an attention map at padded query positions are the padded part, everything else (pooled
outputs, sequence logits, the loss, the other rows) decides.

Example:
    >>> from tandem.core import FAMILIES
    >>> with strict_numerics():
    ...     result = small_parity(FAMILIES["bert"], "masked_lm")
    >>> result.ok
    True
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import torch

from .. import build, config_from_hf, from_pretrained, save_pretrained
from ..core import Family, FamilyConfig, family_of
from ..core.checkpoint import read_weights, task_for_checkpoint
from ..core.hub import resolve
from ..core.nodes import ModelGraph, join
from ..core.params import walk
from ..core.sentence import SENTENCE_TASK, transformer_folder
from .harness import flatten_outputs
from .references import REFERENCES, hf_torch_model
from .sentences import sentence_reference

TOLERANCE = 1e-5
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
NUM_CHOICES = 2


@contextlib.contextmanager
def strict_numerics() -> Iterator[None]:
    """fp32 matmuls at full precision in both frameworks (no TF32, no bf16 passes), restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count``, restored on exit.

    The small models run on one thread. Their ops take microseconds, and with two threads on a busy
    machine each op waits for a preempted pool thread: a 64x32 linear went from 0.01 ms to 16 ms on
    the 2-core VM under load.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def small_config(family: Family, task: str = "base") -> FamilyConfig:
    """``family``'s config for ``task`` at the parity-check size: the tiny config the parity suite checks it at
    (:data:`tandem.tools.references.REFERENCES`) with what the task needs, HF defaults for everything else."""
    return family.config_class(**REFERENCES[family.name].config(task))


def make_batch(
    config: FamilyConfig, task: str, batch: int = 2, length: int = 16, seed: int = 0
) -> dict[str, np.ndarray]:
    """A padded batch with two token-type segments, int64 (HF PyTorch's id dtype).

    Row ``i`` keeps ``length - i * length // (2 * batch)`` tokens, so every row but the first is padded.
    Multiple choice gets ``(batch, 2, length)`` inputs.
    """
    if batch < 1 or length < 2:
        raise ValueError(f"a parity batch needs batch >= 1 and length >= 2, got batch={batch}, length={length}")
    limit = config.max_position_embeddings
    if length > limit:
        raise ValueError(f"length={length} exceeds max_position_embeddings={limit}")
    rng = np.random.default_rng(seed)
    rows = batch * NUM_CHOICES if task == "multiple_choice" else batch
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = rng.integers(0, config.vocab_size, (rows, length), dtype=np.int64)
    kept = length - (np.arange(rows) % batch) * length // (2 * batch)
    mask = (np.arange(length)[None, :] < kept[:, None]).astype(np.int64)
    types = (np.arange(length)[None, :] >= kept[:, None] // 2).astype(np.int64) * mask
    if config.type_vocab_size < 2:
        types = np.zeros_like(types)
    out = {"input_ids": np.where(mask == 1, ids, pad), "attention_mask": mask, "token_type_ids": types}
    if not REFERENCES[family_of(config).name].token_types:
        del out["token_type_ids"]  # HF's classes of the family take none
    if task == "multiple_choice":
        out = {name: value.reshape(batch, NUM_CHOICES, length) for name, value in out.items()}
    return out


def load_batch(path: str | Path) -> dict[str, np.ndarray]:
    """Model inputs from an ``.npz`` file holding ``input_ids`` and optionally the other input names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no inputs file at {path}")
    with np.load(path) as data:
        unknown = sorted(set(data.files) - set(INPUT_NAMES))
        if unknown or "input_ids" not in data.files:
            raise ValueError(f"{path} must hold input_ids and optionally {INPUT_NAMES[1:]}; it has {data.files}")
        return {name: np.asarray(data[name], dtype=np.int64) for name in data.files}


@dataclass(frozen=True)
class Diff:
    """The largest absolute difference between two output sets and the output where it occurs.

    Outputs present in one set only, or with different shapes, count as an infinite difference.
    """

    value: float
    where: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite difference (missing output, shape mismatch, NaN) is ``null``."""
        return {"max_abs_diff": self.value if np.isfinite(self.value) else None, "output": self.where}


Part = Literal["all", "real", "padded"]
_POSITION_LOGITS = ("start_logits", "end_logits")  # (B, S) outputs with one value per position


def padded_positions(name: str, shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray | None:
    """Where output ``name`` of ``shape`` holds padded positions (True), broadcastable to it; None when it has no
    position axis or ``mask`` (the batch's ``attention_mask``, rows flattened: (rows, length)) pads nothing.

    Hidden states and token logits (rows, length, ...) and start/end logits (rows, length) are padded in the
    rows of padded positions; attention maps (rows, heads, queries, keys) in the rows of padded queries."""
    if mask is None or mask.all():
        return None
    rows, length = mask.shape
    pad = mask == 0
    kind = name.split(".")[0]
    if kind in ("attentions", "cross_attentions") and len(shape) == 4 and (shape[0], shape[2]) == (rows, length):
        return pad[:, None, :, None]
    if shape[:2] == (rows, length) and (len(shape) >= 3 or kind in _POSITION_LOGITS):
        return pad.reshape(rows, length, *([1] * (len(shape) - 2)))
    return None


def max_abs_diff(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], mask: np.ndarray | None = None, part: Part = "all"
) -> Diff:
    """The largest |a - b| over the outputs of both; with the batch's attention ``mask``, over the ``real`` or
    the ``padded`` positions only (see :func:`padded_positions`; ``padded`` skips outputs without positions)."""
    only = sorted(set(a) ^ set(b))
    if only:
        return Diff(float("inf"), "only in one: " + ", ".join(only))
    worst = Diff(0.0, "")
    for name in a:
        if a[name].shape != b[name].shape:
            return Diff(float("inf"), f"{name} shapes {a[name].shape} vs {b[name].shape}")
        diff = np.abs(a[name] - b[name])
        pad = None if part == "all" else padded_positions(name, diff.shape, mask)
        if part == "padded" and pad is None:
            continue
        if pad is not None:
            diff = np.where(pad if part == "padded" else ~pad, diff, 0.0)
        value = float(np.max(diff, initial=0.0))
        if not value <= worst.value:  # NaN counts as the worst
            worst = Diff(value if value == value else float("inf"), name)
    return worst


Runner = Callable[[], Any]


def torch_runner(model: torch.nn.Module, batch: Mapping[str, np.ndarray]) -> Runner:
    """A no-argument forward of a torch model (ours or HF's) on ``batch``, with every output recorded."""
    tensors = {name: torch.from_numpy(value) for name, value in batch.items()}

    def run() -> Any:
        with torch.inference_mode():
            return model(**tensors, output_hidden_states=True, output_attentions=True)

    return run


def flax_runner(model: Any, batch: Mapping[str, np.ndarray]) -> Runner:
    """A no-argument jitted forward of a tandem flax model on ``batch``, waited for."""
    arrays = {name: jax.numpy.asarray(value) for name, value in batch.items()}

    def run() -> Any:
        out = model(**arrays, output_hidden_states=True, output_attentions=True)
        # ModelOutput is a dict subclass, which jax does not treat as a pytree: wait on a plain dict.
        return jax.block_until_ready(dict(out))

    return run


def best_ms(run: Runner, repeats: int) -> float:
    """Fastest wall time of ``run`` in ms over ``repeats`` calls, after one untimed call (compile, caches).

    The fastest, not the median: a call of a few ms is what the model costs, and a slower one measures
    the other processes that preempted it (on a busy 2-core machine one preemption of torch's thread pool
    costs about 200 ms).
    """
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def reference_version() -> str | None:
    """The installed ``transformers`` version when it can serve as the reference (``<5``), else None."""
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    return version if int(version.split(".")[0]) < 5 else None


@dataclass
class ParityResult:
    """One model compared across backends (and against HF PyTorch when ``vs_reference`` is set).

    ``error`` is set instead of the diffs when the model could not be built or run.
    """

    family: str
    task: str
    tolerance: float
    torch_vs_flax: Diff | None
    vs_reference: Diff | None
    ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    diverges_at: Diff | None = None  # when not ok: the first graph node whose output is beyond tolerance
    padded: Diff | None = None  # the worst difference at padded positions (decides only with include_padding)
    include_padding: bool = False  # whether torch_vs_flax and vs_reference cover the padded positions

    @property
    def worst(self) -> Diff | None:
        diffs = [d for d in (self.torch_vs_flax, self.vs_reference) if d is not None]
        return max(diffs, key=lambda d: d.value, default=None)

    @property
    def ok(self) -> bool:
        return self.error is None and self.worst is not None and self.worst.value <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "task": self.task,
            "ok": self.ok,
            "error": self.error,
            "tolerance": self.tolerance,
            "torch_vs_flax": None if self.torch_vs_flax is None else self.torch_vs_flax.to_dict(),
            "vs_reference": None if self.vs_reference is None else self.vs_reference.to_dict(),
            "first_divergence": None if self.diverges_at is None else self.diverges_at.to_dict(),
            "padded_positions": None if self.padded is None else self.padded.to_dict(),
            "include_padding": self.include_padding,
            "ms_per_forward": self.ms,
        }


def failed(family: str, task: str, tolerance: float, error: Exception) -> ParityResult:
    """The result of a model that raised ``error`` while being built or run."""
    return ParityResult(family, task, tolerance, None, None, error=f"{type(error).__name__}: {error}")


def compare(
    torch_model: torch.nn.Module,
    flax_model: Any,
    batch: Mapping[str, np.ndarray],
    reference: torch.nn.Module | None = None,
    tolerance: float = TOLERANCE,
    repeats: int = 5,
    include_padding: bool = False,
) -> ParityResult:
    """Run both backends (and ``reference``) on ``batch``; diffs over every output, fastest ms per forward.

    ``vs_reference`` is the worse of torch-vs-reference and flax-vs-reference. The diffs that decide cover
    the real positions of ``batch`` (every position with ``include_padding``); ``padded`` is the worst
    difference at its padded positions, reported apart.
    """
    runners = {"torch": torch_runner(torch_model, batch), "flax": flax_runner(flax_model, batch)}
    if reference is not None:
        runners["reference"] = torch_runner(reference, batch)
    outputs = {name: flatten_outputs(run()) for name, run in runners.items()}
    mask = batch.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).reshape(-1, np.shape(mask)[-1])
    part: Part = "all" if include_padding else "real"
    pairs = [("torch", "flax")] + ([("torch", "reference"), ("flax", "reference")] if reference is not None else [])
    diffs = {pair: max_abs_diff(outputs[pair[0]], outputs[pair[1]], mask, part) for pair in pairs}
    padded = [max_abs_diff(outputs[a], outputs[b], mask, "padded") for a, b in pairs]
    vs_reference = None
    if reference is not None:
        vs_reference = max(diffs[("torch", "reference")], diffs[("flax", "reference")], key=lambda d: d.value)
    graph = torch_model.graph
    result = ParityResult(
        family=graph.family,
        task=graph.task,
        tolerance=tolerance,
        torch_vs_flax=diffs[("torch", "flax")],
        vs_reference=vs_reference,
        ms={name: best_ms(run, repeats) for name, run in runners.items()},
        padded=max(padded, key=lambda d: d.value) if mask is not None and not mask.all() else None,
        include_padding=include_padding,
    )
    for a, b in pairs if not result.ok else ():
        where = (mask, part)
        result.diverges_at = first_divergence(graph, outputs[a], outputs[b], tolerance, f"{a} vs {b}", *where)
        if result.diverges_at is not None:
            break
    return result


def forward_order(graph: ModelGraph) -> list[tuple[str, str]]:
    """``(output, graph node)`` in the order the forward pass computes them: embeddings, then per layer run
    its attention map and its hidden state, the pooler, the heads, the loss. A layer that runs several
    times (ALBERT's shared groups) is named with its run."""
    backbone, encoder = graph.backbone, graph.backbone.encoder
    stack = join(backbone.path, encoder.path)
    first = encoder.input_projection.path if encoder.input_projection is not None else None
    node = join(stack, first) if first else join(backbone.path, backbone.embeddings.path)
    order = [("hidden_states.0", node)]
    runs, seen, attention = Counter(encoder.runs), Counter(), 0
    for step, layers in enumerate(encoder.schedule):
        for index in layers:
            seen[index] += 1
            node = join(stack, encoder.layers[index].path)
            node += f" (run {seen[index]} of {runs[index]})" if runs[index] > 1 else ""
            order.append((f"attentions.{attention}", f"{node} attention"))
            attention += 1
        order.append((f"hidden_states.{step + 1}", node))
    if backbone.final_norm is not None:  # pre-LN stacks: the final norm makes last_hidden_state
        node = join(backbone.path, backbone.final_norm.path)
    order.append(("last_hidden_state", node))
    if backbone.pooler is not None:
        order.append(("pooler_output", join(backbone.path, backbone.pooler.path)))
    for head in graph.heads:
        name = next(path for path, _ in walk(head) if path)  # a head at "" is named by its first child
        order += [(output, name) for output in (getattr(head, "split", None) or (head.output,))]
    return [*order, ("loss", "loss")]


def first_divergence(
    graph: ModelGraph,
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    tolerance: float,
    pair: str,
    mask: np.ndarray | None = None,
    part: Part = "all",
) -> Diff | None:
    """The first node in :func:`forward_order` whose output differs by more than ``tolerance``, if any (over
    ``part`` of the positions, as :func:`max_abs_diff`)."""
    for output, node in forward_order(graph):
        if output in a and output in b:
            diff = max_abs_diff({output: a[output]}, {output: b[output]}, mask, part)
            if diff.value > tolerance:
                return Diff(diff.value, f"{node} ({output}, {pair})")
    return None


def small_parity(
    family: Family,
    task: str,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    with_reference: bool = True,
    batch_size: int = 2,
    length: int = 16,
    include_padding: bool = False,
) -> ParityResult:
    """``family``/``task`` at the small size with random weights from ``seed``, on a padded batch."""
    config = small_config(family, task)
    torch_model = build(config, task=task, backend="torch", seed=seed)
    flax_model = build(config, task=task, backend="flax", seed=seed)
    reference = None
    if with_reference and reference_version() is not None:
        with tempfile.TemporaryDirectory(prefix="tandem-parity-") as tmp:
            save_pretrained(torch_model, tmp)
            reference = hf_torch_model(tmp, family.name, task)
    batch = make_batch(config, task, batch_size, length, seed)
    return compare(torch_model, flax_model, batch, reference, tolerance, include_padding=include_padding)


def checkpoint_parity(
    path: str | Path,
    task: str | None = None,
    batch: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 2,
    length: int = 16,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    with_reference: bool = True,
    include_padding: bool = False,
) -> ParityResult:
    """An HF checkpoint directory (or Hub id) loaded into both backends, compared on ``batch`` (or a seeded one).

    The reference loads the checkpoint itself when ``task`` is the checkpoint's own and the weights are in
    torch layout; for another task (whose head the checkpoint lacks) or a flax checkpoint (which HF PyTorch
    does not read) it loads our torch model's weights, so all three share every weight.
    """
    path = resolve(path, argument="path")  # a Hub id: its snapshot in the HF cache
    folder = transformer_folder(path)  # a sentence-transformers directory's transformer (path itself, or 0_*/)
    if task is None:  # the checkpoint's own HF class (a sentence-transformers directory's too: its transformer)
        task = task_for_checkpoint(config_from_hf(folder)) or "base"
    torch_model = from_pretrained(path, backend="torch", task=task)
    flax_model = from_pretrained(path, backend="flax", task=task)
    config = torch_model.config
    task = torch_model.graph.task
    if batch is None:
        batch = make_batch(config, task, batch_size, length, seed)
    reference = None
    if with_reference and reference_version() is not None:
        family = family_of(config)
        if task == SENTENCE_TASK:  # HF's base model, then sentence-transformers' pooling
            reference = sentence_reference(torch_model)
        elif task == (task_for_checkpoint(config) or "base") and read_weights(folder).layout == "torch":
            reference = hf_torch_model(folder, family.name, task)
        else:
            with tempfile.TemporaryDirectory(prefix="tandem-parity-") as tmp:
                save_pretrained(torch_model, tmp)
                reference = hf_torch_model(tmp, family.name, task)
    return compare(torch_model, flax_model, batch, reference, tolerance, include_padding=include_padding)


def json_report(results: Sequence[ParityResult], reference: str | None) -> dict[str, Any]:
    """The ``--json`` report: overall ``ok``, the reference used (None: none) and one entry per model."""
    return {"ok": all(r.ok for r in results), "reference": reference, "results": [r.to_dict() for r in results]}


def format_table(results: Sequence[ParityResult], reference: str | None) -> str:
    """One row per model: max |diff| torch-vs-flax and vs HF, fastest ms per forward, ok/FAIL."""
    header = ("family", "task", "torch-flax", "vs HF", "padded", "torch ms", "flax ms", "HF ms", "")
    rows = [header] + [
        (
            r.family,
            r.task,
            _cell(r.torch_vs_flax and r.torch_vs_flax.value, ".2e"),
            _cell(r.vs_reference and r.vs_reference.value, ".2e"),
            _cell(r.padded and r.padded.value, ".2e") + ("" if r.include_padding or r.padded is None else "*"),
            _cell(r.ms.get("torch"), ".2f"),
            _cell(r.ms.get("flax"), ".2f"),
            _cell(r.ms.get("reference"), ".2f"),
            "ok" if r.ok else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    failures = [r for r in results if not r.ok]
    tolerances = ", ".join(sorted({f"{r.tolerance:g}" for r in results}))
    lines += [
        "",
        "max |diff| over every output (logits, hidden states, attentions); ms: fastest of 5 forwards after warm-up",
        "padded: max |diff| at padded positions (attention_mask 0); counted in the columns before it only with "
        "--include-padding (*: not counted)",
        f"reference: {reference or 'none'}; tolerance {tolerances}",
        *(f"FAIL {r.family} {r.task}: {_failure(r)}" for r in failures),
        f"{len(results) - len(failures)}/{len(results)} within tolerance",
    ]
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _failure(result: ParityResult) -> str:
    if result.error is not None:
        return result.error.splitlines()[0]
    first = "" if result.diverges_at is None else f"; first diverges at {result.diverges_at.where}"
    return f"{result.worst.value:.2e} at {result.worst.where}{first}"
