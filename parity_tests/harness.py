"""The shared parity harness: HF checkpoint -> tandem (torch and flax) -> compare with HF PyTorch and HF Flax.

A family test is a small case table plus one call (in the spirit of keras-hub's ``run_backbone_test``)::

    CASES = {"masked_lm": dict(task="masked_lm"), "seqcls_3": dict(task="sequence_classification", num_labels=3)}

    @pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
    def test_parity(case, tmp_path):
        run_parity_test(tmp_path, **case)

Every checkpoint is made by HF itself (``BertFor<Task>`` with HF's own init under a fixed torch seed, then a
small perturbation of every parameter, see :func:`make_hf_model`) and written with HF ``save_pretrained``;
tandem only ever sees it through :func:`tandem.from_pretrained`. Outputs are compared as whole tensors
(every logit, every hidden state including padded positions, every attention map, the loss) by their
maximum absolute difference.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
import transformers

import tandem
from tandem.core.params import flatten_tree, param_entries

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

# The small shared config (HF BertConfig kwargs). head_dim = 12 is deliberately not a power of two: HF Flax
# scales Q before the product and HF PyTorch after it, which only agree bitwise when sqrt(head_dim) is one.
# initializer_range is larger than HF's 0.02 so that attention is far from uniform and logits are O(1).
TINY: dict[str, Any] = {
    "vocab_size": 97,
    "hidden_size": 36,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 53,
    "hidden_act": "gelu",
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.2,
    "layer_norm_eps": 1e-12,
}

HF_CLASSES: dict[str, str] = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "masked_lm": "BertForMaskedLM",
    "next_sentence_prediction": "BertForNextSentencePrediction",
    "sequence_classification": "BertForSequenceClassification",
    "multiple_choice": "BertForMultipleChoice",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
}
TASKS: tuple[str, ...] = tuple(HF_CLASSES)
LOSS_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "base")

# Largest difference seen per comparison kind over the session; conftest prints it at the end.
MAX_DIFFS: dict[str, float] = {}


def record(kind: str, value: float) -> None:
    MAX_DIFFS[kind] = max(MAX_DIFFS.get(kind, 0.0), float(value))


# ------------------------------------------------------------------------------------------ checkpoints
def hf_config(**overrides: Any) -> transformers.BertConfig:
    """An HF ``BertConfig`` from :data:`TINY` plus ``overrides``, eager attention (the reference path)."""
    kwargs = {**TINY, **overrides}
    return transformers.BertConfig(**kwargs, attn_implementation="eager")


def make_hf_model(task: str, seed: int = 0, perturb: float = 0.05, **overrides: Any) -> torch.nn.Module:
    """An HF PyTorch model for ``task`` with HF's own init under ``torch.manual_seed(seed)``, in eval mode.

    HF's init sets every bias to 0 and every LayerNorm to (1, 0): a bias that is never added, or two that are
    swapped, would then go unnoticed. So each parameter then gets N(0, perturb^2) noise added (tied
    parameters are one object and are perturbed once).
    """
    torch.manual_seed(seed)
    model = getattr(transformers, HF_CLASSES[task])(hf_config(**overrides))
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
    return model.eval()


def save_hf_checkpoint(model: torch.nn.Module, directory: Path) -> Path:
    """HF ``save_pretrained`` with safetensors, the format tandem reads."""
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def hf_flax_model(task: str, directory: Path) -> Any:
    """HF Flax's own loader on the same PyTorch checkpoint (``from_pt=True``)."""
    cls = getattr(transformers, "Flax" + HF_CLASSES[task])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF's Flax deprecation notice
        return cls.from_pretrained(directory, from_pt=True)


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
    """A padded batch with token types and random labels for ``task``.

    Rows cycle through ``mask_patterns`` (default: full, right-padded, left-padded, fully masked, a hole);
    padded positions carry the pad id 0. Multiple choice gets ``(batch, num_choices, length)`` inputs.
    ``problem`` picks the sequence-classification label kind (None: integer classes).
    """
    rng = np.random.default_rng(seed)
    vocab, types = int(config["vocab_size"]), int(config.get("type_vocab_size", 2))
    lead = (batch, num_choices) if task == "multiple_choice" else (batch,)
    rows = int(np.prod(lead))
    patterns = list(mask_patterns) if mask_patterns is not None else list(range(5))
    mask = np.stack([_mask_row(patterns[i % len(patterns)], length) for i in range(rows)])
    ids = rng.integers(1, vocab, size=(rows, length))
    ids = np.where(mask == 1, ids, 0)
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
    if task == "masked_lm":
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


# --------------------------------------------------------------------------------------------- running
def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def flat_outputs(output: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{field: array}`` with tuples expanded (``hidden_states.0`` ... ``attentions.1``)."""
    flat: dict[str, np.ndarray] = {}
    for name, value in output.items():
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                flat[f"{name}.{i}"] = to_numpy(item)
        else:
            flat[name] = to_numpy(value)
    return flat


def run_torch(model: torch.nn.Module, batch: Batch, with_labels: bool = True, **flags: Any) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return flat_outputs(model(**batch.torch(with_labels), **flags))


def run_flax(model: Any, batch: Batch, with_labels: bool = True, **flags: Any) -> dict[str, np.ndarray]:
    return flat_outputs(model(**batch.numpy(with_labels), **flags))


def run_hf_flax(model: Any, batch: Batch, **flags: Any) -> dict[str, np.ndarray]:
    """HF Flax takes positional-compatible keywords and has no labels, loss or inputs_embeds."""
    return flat_outputs(model(**batch.inputs, **flags))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
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
    assert not missing, f"{kind}: outputs missing {missing}; have {sorted(ours)}"
    diffs = {f: max_abs_diff(ours[f], reference[f]) for f in names}
    if diffs:
        record(kind, max(diffs.values()))
    bad = {f: d for f, d in diffs.items() if not d <= atol}
    assert not bad, f"{kind}: max abs diff above {atol}: {bad}"
    return diffs


def same_fields(kind: str, ours: Mapping[str, Any], reference: Mapping[str, Any], drop: Sequence[str] = ()) -> None:
    """The output field sets agree (tuples expanded), apart from ``drop``."""
    a = sorted(k for k in ours if k.split(".")[0] not in drop)
    b = sorted(k for k in reference if k.split(".")[0] not in drop)
    assert a == b, f"{kind}: output fields differ:\n  ours {a}\n  reference {b}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass
class Loaded:
    """One HF checkpoint and everything loaded from it."""

    task: str
    directory: Path
    config: dict[str, Any]
    hf: torch.nn.Module
    torch: Any
    flax: Any
    _hf_flax: Any = None

    @property
    def hf_flax(self) -> Any:
        if self._hf_flax is None:
            self._hf_flax = hf_flax_model(self.task, self.directory)
        return self._hf_flax


def load_case(directory: Path, task: str, seed: int = 0, perturb: float = 0.05, **overrides: Any) -> Loaded:
    """Make and save an HF checkpoint for ``task`` and load it with tandem in both backends."""
    hf = make_hf_model(task, seed=seed, perturb=perturb, **overrides)
    save_hf_checkpoint(hf, directory)
    torch_model = tandem.from_pretrained(directory, backend="torch")
    flax_model = tandem.from_pretrained(directory, backend="flax")
    assert torch_model.task == task and flax_model.task == task, (torch_model.task, flax_model.task)
    config = {**TINY, **overrides}
    return Loaded(task=task, directory=directory, config=config, hf=hf, torch=torch_model, flax=flax_model)


class CheckpointCache:
    """One :class:`Loaded` per (task, config overrides), made on first use (a session fixture holds it).

    Reusing the loaded flax model reuses its jitted forward, which keeps JAX compiles (the suite's main
    cost) to one per case and call signature.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cases: dict[tuple[str, tuple[tuple[str, Any], ...]], Loaded] = {}

    def get(self, task: str, **overrides: Any) -> Loaded:
        key = (task, tuple(sorted(overrides.items())))
        if key not in self._cases:
            directory = self.root / f"case{len(self._cases)}_{task}"
            self._cases[key] = load_case(directory, task, **overrides)
        return self._cases[key]


def run_parity_test(
    directory: Path,
    task: str,
    seed: int = 0,
    problem: str | None = None,
    batch_kwargs: Mapping[str, Any] | None = None,
    with_hf_flax: bool = True,
    inputs_embeds: bool = False,
    loaded: Loaded | None = None,
    **overrides: Any,
) -> Loaded:
    """The whole parity check for one config + task.

    1. HF PyTorch model (eager attention, HF init, fixed seed) -> HF ``save_pretrained`` -> ``directory``.
    2. ``tandem.from_pretrained`` in torch and in flax.
    3. A padded batch with token types and labels; hidden states and attentions requested.
    4. Every HF PyTorch output (loss included) vs tandem torch and tandem flax; tandem torch vs flax; HF Flax
       (``from_pt=True``) vs all three on everything it returns (it has no loss). All within :data:`ATOL`.
    5. The same call without hidden states/attentions, HF vs tandem torch (which then takes its fused
       attention kernel).
    6. With ``inputs_embeds=True``, the same batch fed as embeddings (HF Flax has no such argument).
    """
    case = loaded or load_case(directory, task, seed=seed, **overrides)
    config = case.config
    batch = make_batch(task, config, seed=seed, problem=problem, **(batch_kwargs or {}))
    flags = {"output_hidden_states": True, "output_attentions": True}

    hf = run_torch(case.hf, batch, **flags)
    ours_torch = run_torch(case.torch, batch, **flags)
    ours_flax = run_flax(case.flax, batch, **flags)
    if task != "base":
        assert "loss" in hf, "the batch should make HF compute a loss"
    assert f"hidden_states.{config['num_hidden_layers']}" in hf
    same_fields("torch vs HF torch", ours_torch, hf)
    same_fields("flax vs HF torch", ours_flax, hf)
    compare("torch vs HF torch", ours_torch, hf)
    compare("flax vs HF torch", ours_flax, hf)
    compare("torch vs flax", ours_torch, ours_flax)

    if with_hf_flax:
        hf_flax = run_hf_flax(case.hf_flax, batch, **flags)
        same_fields("HF flax vs HF torch", hf_flax, hf, drop=("loss",))
        compare("HF flax vs HF torch", hf_flax, hf, fields=list(hf_flax))
        compare("torch vs HF flax", ours_torch, hf_flax)
        compare("flax vs HF flax", ours_flax, hf_flax)

    # Flax runs one code path whatever it records (test_bert_parity checks its plain call separately, to
    # save a compile per case); tandem torch switches to its fused attention kernel.
    plain_hf = run_torch(case.hf, batch)
    plain_torch = run_torch(case.torch, batch)
    same_fields("torch vs HF torch (no hidden states)", plain_torch, plain_hf)
    compare("torch vs HF torch", plain_torch, plain_hf)

    if inputs_embeds:
        rng = np.random.default_rng(seed + 7)
        ids = batch.inputs["input_ids"]
        embeds = rng.standard_normal((*ids.shape, config["hidden_size"])).astype(np.float32)
        by_embeds = Batch({**{k: v for k, v in batch.inputs.items() if k != "input_ids"}, "inputs_embeds": embeds})
        by_embeds.labels = batch.labels
        hf_e = run_torch(case.hf, by_embeds, **flags)
        compare("torch vs HF torch (inputs_embeds)", run_torch(case.torch, by_embeds, **flags), hf_e)
        compare("flax vs HF torch (inputs_embeds)", run_flax(case.flax, by_embeds, **flags), hf_e)
    return case


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
    """The loss and gradients from ``jax.grad`` of ``model.apply``, mapped back to torch layout and names.

    The jitted ``value_and_grad`` is kept per model, so batches of the same shapes compile once.
    """
    if id(model) not in _GRAD_FNS:

        def loss_fn(params: Any, arrays: dict[str, np.ndarray]) -> jax.Array:
            return model.apply(params, **arrays).loss

        _GRAD_FNS[id(model)] = (model, jax.jit(jax.value_and_grad(loss_fn)))
    loss, tree = _GRAD_FNS[id(model)][1](model.params, batch.numpy())
    flat = flatten_tree(tree)
    grads = {e.key: e.from_flax(np.asarray(flat[e.flax_path])) for e in param_entries(model.graph)}
    return float(loss), grads


def compare_grads(kind: str, ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor relative check (see :data:`GRAD_RTOL`); returns the normalised error per key."""
    assert sorted(ours) == sorted(reference), f"{kind}: parameter sets differ"
    scale = max(float(np.max(np.abs(g))) for g in reference.values())
    assert scale > 0, f"{kind}: every reference gradient is zero"
    errors = {}
    for key, ref in reference.items():
        assert ours[key].shape == ref.shape, f"{kind}: {key} grad shape {ours[key].shape} vs {ref.shape}"
        bound = max(float(np.max(np.abs(ref))), GRAD_FLOOR * scale)
        errors[key] = max_abs_diff(ours[key], ref) / bound
    record(kind + " (relative)", max(errors.values()))
    bad = {k: e for k, e in errors.items() if not e <= GRAD_RTOL}
    assert not bad, f"{kind}: gradient relative error above {GRAD_RTOL}: {bad}"
    return errors


def flax_param_shapes(params: Mapping[str, Any]) -> list[tuple[str, list[int]]]:
    return sorted(("/".join(path), list(np.shape(v))) for path, v in flatten_tree(params).items())


def torch_state_shapes(state: Mapping[str, torch.Tensor]) -> list[tuple[str, list[int]]]:
    return sorted((k, list(v.shape)) for k, v in state.items())
