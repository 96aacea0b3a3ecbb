"""The parity harness: an HF checkpoint, tandem's two loads of it, and every output of all of them compared.

A test is a small case table plus one call (keras-hub's ``run_backbone_test``)::

    CASES = [Case("albert", "masked_lm"), Case("albert", "sequence_classification", {"num_labels": 3})]

    @pytest.mark.parametrize("case", CASES)
    def test_parity(case, tmp_path):
        run_case(case, load(tmp_path, case.family, case.task, case.config))

Every checkpoint is made by HF itself (HF's class for the task with HF's own init under a fixed torch seed,
then a small perturbation of every parameter: :func:`~tandem.tools.references.make_hf_model`) and written with
HF ``save_pretrained``; tandem only ever sees it through :func:`tandem.from_pretrained`. Outputs are compared
as whole tensors (every logit, every hidden state including padded positions, every attention map, the
loss) by their maximum absolute difference, within :data:`ATOL`. Run it under strict numerics: fp32,
``jax_default_matmul_precision="highest"``, TF32 off (the parity suite's conftest sets them for the session).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from flax import nnx

from .. import from_pretrained
from ..core.params import from_flax_tree, param_entries
from .references import REFERENCES, HFFlax, Reference, hf_flax_model, make_hf_model, quiet

# fp32 at "highest" matmul precision: HF PyTorch eager is the reference, every pair must agree to this.
ATOL = 1e-5
# Gradients: per parameter tensor, max|g - g_ref| <= GRAD_RTOL * max(max|g_ref|, GRAD_FLOOR * G), where G is the
# largest |gradient entry| of the whole model. Round-off in a backward pass is relative to the magnitudes being
# accumulated, so each tensor is held to its own largest entry. The floor covers gradients that cancel exactly
# (the multiple-choice classifier bias: per example, the softmax-minus-one-hot terms sum to zero) or nearly
# (embedding rows that no token uses): their computed value is round-off of summands of size ~G, so they can
# only be asked to agree to ~1e-6 * G.
GRAD_RTOL = 1e-4
GRAD_FLOOR = 1e-2
FLAGS = {"output_hidden_states": True, "output_attentions": True}

# Largest difference seen per comparison kind over the session; the parity suite prints it at the end.
MAX_DIFFS: dict[str, float] = {}


def record(kind: str, value: float) -> None:
    MAX_DIFFS[kind] = max(MAX_DIFFS.get(kind, 0.0), float(value))


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Batch:
    """Model inputs and labels as numpy arrays (converted per framework at the call)."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def torch(self, with_labels: bool = True) -> dict[str, torch.Tensor]:
        items = {**self.inputs, **(self.labels if with_labels else {})}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in items.items()}

    def numpy(self, with_labels: bool = True) -> dict[str, np.ndarray]:
        return {**self.inputs, **(self.labels if with_labels else {})}


# Attention-mask patterns cycled over the rows: full, right padding, left padding, fully masked, a hole.
def _mask_row(pattern: int, length: int) -> np.ndarray:
    row = np.ones(length, np.int64)
    kind = pattern % 5
    if kind == 1:
        row[max(1, length - 3) :] = 0
    elif kind == 2:
        row[: min(2, length - 1)] = 0
    elif kind == 3:
        row[:] = 0
    elif kind == 4:
        row[length // 2] = 0
    return row


def make_batch(
    task: str,
    config: Mapping[str, Any],
    seed: int = 0,
    batch: int = 5,
    length: int = 9,
    num_choices: int = 3,
    mask_patterns: Sequence[int] | None = None,
    problem: str | None = None,
) -> Batch:
    """A padded batch with token types and random labels for ``task`` (``config``: HF config kwargs).

    Rows cycle through ``mask_patterns`` (default: full, right-padded, left-padded, fully masked, a hole);
    padded positions carry the config's ``pad_token_id`` (0 without one).
    Multiple choice gets ``(batch, num_choices, length)`` inputs.
    ``problem`` picks the sequence-classification label kind (None: integer classes).
    """
    rng = np.random.default_rng(seed)
    vocab, types = int(config["vocab_size"]), int(config.get("type_vocab_size", 2))
    lead = (batch, num_choices) if task == "multiple_choice" else (batch,)
    rows = int(np.prod(lead))
    patterns = list(mask_patterns) if mask_patterns is not None else list(range(5))
    mask = np.stack([_mask_row(patterns[i % len(patterns)], length) for i in range(rows)])
    ids = rng.integers(1, vocab, size=(rows, length))
    ids = np.where(mask == 1, ids, int(config.get("pad_token_id") or 0))
    token_types = np.zeros((rows, length), np.int64)
    if types > 1:
        for r in range(rows):
            cut = rng.integers(1, length + 1)
            token_types[r, cut:] = rng.integers(1, types)
    inputs = {
        "input_ids": ids.reshape(*lead, length),
        "attention_mask": mask.reshape(*lead, length),
        "token_type_ids": token_types.reshape(*lead, length),
    }
    return Batch(
        inputs=inputs, labels=make_labels(task, config, rng, mask.reshape(*lead, length), num_choices, problem)
    )


def make_labels(
    task: str,
    config: Mapping[str, Any],
    rng: np.random.Generator,
    mask: np.ndarray,
    num_choices: int,
    problem: str | None = None,
) -> dict[str, np.ndarray]:
    """Random labels of the kind HF's loss for ``task`` reads (ignored positions included)."""
    batch, length = mask.shape[0], mask.shape[-1]
    vocab = int(config["vocab_size"])
    num_labels = int(config.get("num_labels", 2))

    def token_labels(high: int) -> np.ndarray:
        labels = rng.integers(0, high, size=(batch, length))
        ignored = (rng.random((batch, length)) < 0.3) | (mask == 0)
        ignored[0, 0] = False  # at least one position counts
        return np.where(ignored, -100, labels)

    if task == "base":
        return {}
    if task == "pretraining":
        return {"labels": token_labels(vocab), "next_sentence_label": rng.integers(0, 2, size=batch)}
    if task in ("masked_lm", "causal_lm"):
        return {"labels": token_labels(vocab)}
    if task == "next_sentence_prediction":
        return {"labels": rng.integers(0, 2, size=batch)}
    if task == "token_classification":
        return {"labels": token_labels(num_labels)}
    if task == "multiple_choice":
        return {"labels": rng.integers(0, num_choices, size=batch)}
    if task == "question_answering":
        start = rng.integers(0, length, size=batch)
        end = rng.integers(0, length, size=batch)
        if batch > 1:  # out of range: clamped to length and ignored, as HF does (all ignored would be NaN)
            start[-1] = length + 3
        return {"start_positions": start, "end_positions": end}
    if task == "sequence_classification":
        if (problem is None and num_labels == 1) or problem == "regression":
            shape = (batch,) if num_labels == 1 else (batch, num_labels)
            return {"labels": rng.standard_normal(shape).astype(np.float32)}
        if problem == "multi_label_classification":
            return {"labels": (rng.random((batch, num_labels)) < 0.5).astype(np.float32)}
        return {"labels": rng.integers(0, num_labels, size=batch)}
    raise ValueError(f"no labels for task {task!r}")


# ------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Loaded:
    """One HF checkpoint and everything loaded from it; ``config`` holds the HF config kwargs it was made of."""

    reference: Reference
    task: str
    directory: Path
    config: dict[str, Any]
    hf: torch.nn.Module
    torch: Any
    flax: Any
    nnx: Any
    _hf_flax: HFFlax | None = None

    @property
    def hf_flax(self) -> HFFlax:
        """HF Flax's class on the same checkpoint, made on first use."""
        if self._hf_flax is None:
            self._hf_flax = hf_flax_model(self.directory, self.reference.name, self.task)
        return self._hf_flax


def load(
    directory: Path,
    family: str,
    task: str,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    perturb: float = 0.05,
) -> Loaded:
    """Make HF's model for ``task`` (the family's tiny config plus ``overrides``), save it to ``directory``
    with HF ``save_pretrained`` and load that checkpoint with tandem in its three backends."""
    hf = make_hf_model(family, task, overrides, seed, perturb)
    hf.save_pretrained(directory, safe_serialization=True)
    with quiet():  # a BigBird decoder's note that it runs full attention
        models = [from_pretrained(directory, backend=backend) for backend in ("torch", "flax", "nnx")]
    if any(model.task != task for model in models):
        loads = ", ".join(f"{model.task} ({model.backend})" for model in models)
        raise AssertionError(f"{directory} loads as {loads}, not {task}")
    reference = REFERENCES[family]
    return Loaded(reference, task, directory, reference.config(task, overrides), hf, *models)


def case_batch(
    loaded: Loaded, length: int = 9, batch: int | None = None, seed: int = 0, problem: str | None = None
) -> Batch:
    """:func:`make_batch` for the loaded task with the family's mask patterns (by default one row each),
    label names and inputs."""
    reference, config = loaded.reference, loaded.config
    out = make_batch(
        loaded.task,
        config,
        seed=seed,
        batch=len(reference.mask_patterns) if batch is None else batch,
        length=length,
        mask_patterns=reference.mask_patterns,
        problem=problem,
    )
    if not reference.token_types:
        del out.inputs["token_type_ids"]
    if "next_sentence_label" in out.labels and reference.pair_label is None:  # replaced-token detection
        out.labels = {"labels": np.random.default_rng(seed).integers(0, 2, out.inputs["input_ids"].shape)}
    if "next_sentence_label" in out.labels:
        out.labels[reference.pair_label] = out.labels.pop("next_sentence_label")
    if reference.question_separator and loaded.task == "question_answering":
        ids, sep = out.inputs["input_ids"], config["sep_token_id"]
        ids[:, 3] = sep  # questions of 4 tokens (their logits but the first get the -1e6 mask)...
        ids[1, 3], ids[1, 6] = sep + 2, sep  # ... but in row 1, of 7 tokens
        del out.inputs["token_type_ids"]  # token types then come from the question mask
        # Answers lie after the question: a label inside it (logit -1e6) makes a loss of ~1e5, where float32
        # steps are ~0.01, so no tolerance of 1e-5 could hold it.
        for name in ("start_positions", "end_positions"):
            out.labels[name] = np.maximum(out.labels[name], 7)
    return out


# --------------------------------------------------------------------------------------------- running
def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


# A decoder's KV cache is state for the next call, laid out differently by each implementation; what it
# holds shows in the outputs of that next call (compared in parity_tests/test_decoder.py).
NOT_COMPARED = ("past_key_values",)


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{field: array}`` with tuple fields spread out as ``hidden_states.0``, ``hidden_states.1``...

    The KV cache (``past_key_values``) is left out, and so are ``None`` entries (HF Flax BigBird's attention
    maps in block-sparse mode).
    """
    flat: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        if value is None or name in NOT_COMPARED:
            continue
        if isinstance(value, tuple | list):
            for i, item in enumerate(value):
                if item is not None:
                    flat[f"{name}.{i}"] = to_numpy(item)
        else:
            flat[name] = to_numpy(value)
    return flat


def run_torch(model: torch.nn.Module, batch: Batch, with_labels: bool = True, **flags: Any) -> dict[str, np.ndarray]:
    """A torch model's (tandem's or HF's) outputs on ``batch``; ``flags`` are call arguments."""
    with torch.no_grad():
        return flatten_outputs(model(**batch.torch(with_labels), **flags))


def run_flax(model: Any, batch: Batch, with_labels: bool = True, **flags: Any) -> dict[str, np.ndarray]:
    """A tandem JAX model's (linen or NNX) outputs on ``batch``; ``flags`` are call arguments."""
    return flatten_outputs(model(**batch.numpy(with_labels), **flags))


def run_hf_flax(model: HFFlax, batch: Batch, **flags: bool) -> dict[str, np.ndarray]:
    """HF Flax's outputs on ``batch``'s inputs: it takes no labels (no loss) and no ``inputs_embeds``."""
    return flatten_outputs(model(batch.inputs, **flags))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b|; NaN where both are NaN counts as agreement, NaN in one only as an infinite difference."""
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))


def compare(
    kind: str,
    ours: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    atol: float = ATOL,
    fields: Sequence[str] | None = None,
) -> dict[str, float]:
    """Assert every field of ``reference`` (or ``fields``) is in ``ours`` and within ``atol``, whole tensors.

    Returns the max abs difference per field; records the largest under ``kind``.
    """
    names = list(fields) if fields is not None else list(reference)
    missing = [f for f in names if f not in ours]
    if missing:
        raise AssertionError(f"{kind}: outputs missing {missing}; have {sorted(ours)}")
    diffs = {f: max_abs_diff(ours[f], reference[f]) for f in names}
    if diffs:
        record(kind, max(diffs.values()))
    bad = {f: d for f, d in diffs.items() if not d <= atol}
    if bad:
        raise AssertionError(f"{kind}: max abs diff above {atol}: {bad}")
    return diffs


def same_fields(kind: str, ours: Mapping[str, Any], reference: Mapping[str, Any], drop: Sequence[str] = ()) -> None:
    """Assert the output field sets agree (tuples expanded), apart from the fields named in ``drop``."""
    a = sorted(k for k in ours if k.split(".")[0] not in drop)
    b = sorted(k for k in reference if k.split(".")[0] not in drop)
    if a != b:
        raise AssertionError(f"{kind}: output fields differ:\n  ours {a}\n  reference {b}")


@dataclass(frozen=True)
class Case:
    """One parity check: a family's task, HF config overrides on its tiny config, and the batch it runs on.

    ``batch``: rows (None: one per mask pattern of the family); ``problem``: the sequence-classification
    label kind; ``hf_flax``: compare with HF Flax too, where HF has the class; ``hf_flax_lacks``: output
    fields HF Flax does not return in this case (HF PyTorch's are compared with tandem's all the same);
    ``inputs_embeds``: also feed the batch as embeddings.
    """

    family: str
    task: str
    config: Mapping[str, Any] = field(default_factory=dict)
    length: int = 9
    batch: int | None = None
    problem: str | None = None
    hf_flax: bool = True
    hf_flax_lacks: tuple[str, ...] = ()
    inputs_embeds: bool = False


def run_case(case: Case, loaded: Loaded) -> None:
    """The whole parity check of ``case`` on ``loaded`` (its checkpoint): :func:`check_parity` on the case's
    batch, then with ``inputs_embeds`` the same batch fed as embeddings (HF Flax has no such argument)."""
    if loaded.config != loaded.reference.config(case.task, case.config) or loaded.task != case.task:
        raise ValueError(f"{case} does not describe the checkpoint at {loaded.directory}")
    batch = case_batch(loaded, case.length, case.batch, problem=case.problem)
    check_parity(loaded, batch, hf_flax=case.hf_flax, hf_flax_lacks=case.hf_flax_lacks)
    if case.inputs_embeds:
        ids = batch.inputs["input_ids"]
        width = getattr(loaded.hf.config, "embedding_size", loaded.hf.config.hidden_size)
        embeds = np.random.default_rng(7).standard_normal((*ids.shape, width)).astype(np.float32)
        inputs = {k: v for k, v in batch.inputs.items() if k != "input_ids"}
        check_parity(loaded, Batch({**inputs, "inputs_embeds": embeds}, batch.labels), hf_flax=False)


def check_parity(loaded: Loaded, batch: Batch, hf_flax: bool = True, hf_flax_lacks: Sequence[str] = ()) -> None:
    """HF PyTorch (eager attention) vs tandem torch, linen and NNX (vs HF Flax) on ``batch``, every output.

    1. Hidden states and attentions requested: every HF PyTorch output (the loss included) vs tandem torch,
       flax (linen) and NNX, and tandem torch vs flax vs NNX; the field sets must agree. (Linen and NNX
       share compiled programs, so the NNX column costs no compilation.)
    2. With ``hf_flax`` where HF has Flax classes for the family: HF Flax vs all four on everything it
       returns, which must be HF PyTorch's fields but the loss (HF Flax has none) and ``hf_flax_lacks``.
    3. The call without hidden states/attentions, HF vs tandem torch (which then takes its fused attention
       kernel; flax runs one code path whatever it records).
    """
    name = loaded.reference.name
    # HF BigBird switches itself to full attention for good on a short input: each check runs on a copy.
    hf = copy.deepcopy(loaded.hf)
    reference = run_torch(hf, batch, **FLAGS)
    ours_torch = run_torch(loaded.torch, batch, **FLAGS)
    ours_flax = run_flax(loaded.flax, batch, **FLAGS)
    ours_nnx = run_flax(loaded.nnx, batch, **FLAGS)
    if loaded.task != "base" and "loss" not in reference:
        raise AssertionError("the batch should make HF compute a loss")
    if f"hidden_states.{loaded.hf.config.num_hidden_layers}" not in reference:
        raise AssertionError(f"HF returned no last hidden state: {sorted(reference)}")
    same_fields(f"{name} torch vs HF torch", ours_torch, reference)
    same_fields(f"{name} flax vs HF torch", ours_flax, reference)
    same_fields(f"{name} nnx vs HF torch", ours_nnx, reference)
    compare(f"{name} torch vs HF torch", ours_torch, reference)
    compare(f"{name} flax vs HF torch", ours_flax, reference)
    compare(f"{name} nnx vs HF torch", ours_nnx, reference)
    compare(f"{name} torch vs flax", ours_torch, ours_flax)
    compare(f"{name} nnx vs flax", ours_nnx, ours_flax)

    if hf_flax and loaded.reference.has_flax:
        hf_flax_out = run_hf_flax(loaded.hf_flax, batch, **FLAGS)
        same_fields(f"{name} HF flax vs HF torch", hf_flax_out, reference, drop=("loss", *hf_flax_lacks))
        compare(f"{name} HF flax vs HF torch", hf_flax_out, reference, fields=list(hf_flax_out))
        compare(f"{name} torch vs HF flax", ours_torch, hf_flax_out)
        compare(f"{name} flax vs HF flax", ours_flax, hf_flax_out)
        compare(f"{name} nnx vs HF flax", ours_nnx, hf_flax_out)

    plain_hf = run_torch(hf, batch)
    plain_torch = run_torch(loaded.torch, batch)
    same_fields(f"{name} torch vs HF torch (no hidden states)", plain_torch, plain_hf)
    compare(f"{name} torch vs HF torch", plain_torch, plain_hf)


# ------------------------------------------------------------------------------------------- gradients
def torch_grads(model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and ``{HF PyTorch key: grad}`` for every canonical tandem parameter key."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch.torch()).loss
    loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    grads = {}
    for entry in param_entries(model.graph):
        grad = params[entry.key].grad
        grads[entry.key] = np.zeros(entry.spec.shape, np.float32) if grad is None else grad.numpy().copy()
    return float(loss.detach()), grads


def hf_torch_grads(model: torch.nn.Module, batch: Batch, keys: Sequence[str]) -> tuple[float, dict[str, np.ndarray]]:
    """HF PyTorch's loss and gradients for ``keys`` (tied aliases share one Parameter, hence one grad)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch.torch()).loss
    loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    grads = {}
    for key in keys:
        grad = params[key].grad
        grads[key] = np.zeros(tuple(params[key].shape), np.float32) if grad is None else grad.numpy().copy()
    return float(loss.detach()), grads


_GRAD_FNS: dict[int, Any] = {}


def flax_grads(model: Any, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and gradients from ``jax.grad`` of ``model.apply``, in torch layout under HF PyTorch keys.

    The jitted ``value_and_grad`` is kept per model, so batches of the same shapes compile once.
    """
    if id(model) not in _GRAD_FNS:

        def loss_fn(params: Any, arrays: dict[str, np.ndarray]) -> jax.Array:
            return model.apply(params, **arrays).loss

        _GRAD_FNS[id(model)] = (model, jax.jit(jax.value_and_grad(loss_fn)))
    loss, tree = _GRAD_FNS[id(model)][1](model.params, batch.numpy())
    return float(loss), from_flax_tree(model.graph, tree)


def nnx_grads(model: Any, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and gradients from ``nnx.value_and_grad`` of the NNX module's call (wrt its ``nnx.Param``s),
    in torch layout under HF PyTorch keys."""
    arrays = batch.numpy()
    loss, state = nnx.value_and_grad(lambda m: m(**arrays).loss)(model)
    return float(loss), from_flax_tree(model.graph, nnx.to_pure_dict(state))


def compare_grads(kind: str, ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor relative check (see :data:`GRAD_RTOL`); returns the normalised error per key."""
    if sorted(ours) != sorted(reference):
        raise AssertionError(f"{kind}: parameter sets differ")
    scale = max(float(np.max(np.abs(g))) for g in reference.values())
    if not scale > 0:
        raise AssertionError(f"{kind}: every reference gradient is zero")
    errors = {}
    for key, ref in reference.items():
        if ours[key].shape != ref.shape:
            raise AssertionError(f"{kind}: {key} grad shape {ours[key].shape} vs {ref.shape}")
        bound = max(float(np.max(np.abs(ref))), GRAD_FLOOR * scale)
        errors[key] = max_abs_diff(ours[key], ref) / bound
    record(kind + " (relative)", max(errors.values()))
    bad = {k: e for k, e in errors.items() if not e <= GRAD_RTOL}
    if bad:
        raise AssertionError(f"{kind}: gradient relative error above {GRAD_RTOL}: {bad}")
    return errors
