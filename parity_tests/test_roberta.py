"""RoBERTa, XLM-RoBERTa, CamemBERT and RoBERTa-PreLayerNorm: every task vs HF PyTorch and HF Flax.

One case table and one call per case on the shared harness. The families' tiny config has
``pad_token_id=1``, so padded rows (right, left, a hole) carry pad ids and the default position ids skip them
(HF's ``create_position_ids_from_input_ids``); ``inputs_embeds`` cases check
``create_position_ids_from_inputs_embeds``. Decoders are checked step by step from a KV cache without
position ids (positions then continue from the cached length) and by greedy generation against HF's
``generate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness
import numpy as np
import pytest
import torch
from harness import REFERENCES, Case
from transformers.cache_utils import DynamicCache

import tandem
from tandem.tools.references import hf_torch_model

FAMILIES = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm")
PAD = REFERENCES["roberta"].tiny["pad_token_id"]

# Positions from padding_idx + 1 when embeddings are given (HF Flax takes no inputs_embeds).
EMBEDS = {("roberta", "base"), ("roberta-prelayernorm", "token_classification")}
# HF Flax XLM-RoBERTa's heads are HF Flax RoBERTa's, copied (the golden manifests pin every head's tree): its
# compile per case is spent on the base model and the two LMs only.
XLMR_FLAX = ("base", "masked_lm", "causal_lm")

CASES: list[Case] = [
    *(
        Case(
            family,
            task,
            inputs_embeds=(family, task) in EMBEDS,
            hf_flax=family != "xlm-roberta" or task in XLMR_FLAX,
        )
        for family in FAMILIES
        for task in REFERENCES[family].tasks
    ),
    Case("roberta", "masked_lm", {"tie_word_embeddings": False}, hf_flax=False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{c.task}-{i}" for i, c in enumerate(CASES)])
def test_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    """A task added to one of these families fails here until the table above checks it."""
    registered = {(family, task) for family in FAMILIES for task in REFERENCES[family].tasks}
    assert registered <= {(case.family, case.task) for case in CASES}


def test_gradients(checkpoints: harness.CheckpointCache) -> None:
    """Loss and the gradient of every parameter agree between backends and with HF PyTorch: pre-LN layers, the
    final norm, the tied LM head and the position table's padding row (no gradient, pad ids in the batch)."""
    family = "roberta-prelayernorm"
    loaded = checkpoints.load(family, "masked_lm")
    batch = harness.case_batch(loaded)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(loaded.hf, batch, list(grads_t))
    assert abs(loss_t - loss_f) <= 1e-5 * max(1.0, abs(loss_t))
    assert abs(loss_t - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf))
    harness.compare_grads(f"{family} grads flax vs torch", grads_f, grads_t)
    harness.compare_grads(f"{family} grads torch vs HF torch", grads_t, grads_hf)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _prompts(vocab: int, right_padding: bool = True) -> dict[str, np.ndarray]:
    """An unpadded row with a pad id that the mask keeps (it still takes the pad position, as in HF), a row
    left-padded by 2 and one left-padded by 4 or (``right_padding``) right-padded by 3; pad ids on padding."""
    ids = np.random.default_rng(11).integers(PAD + 1, vocab, size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    if right_padding:
        mask[2, -3:] = 0
    else:
        mask[2, :4] = 0
    ids = np.where(mask == 1, ids, PAD)
    ids[0, 3] = PAD
    return {"input_ids": ids, "attention_mask": mask}


def test_cached_steps_without_positions_match_hf(checkpoints: harness.CheckpointCache) -> None:
    """A prompt, then two one-token steps from the KV cache, no position ids given: positions continue
    from the cached length (``create_position_ids_from_input_ids(..., past_key_values_length)``), so every
    step's logits equal HF PyTorch's, in both backends (flax with a fixed-size cache). On the pre-LN decoder,
    whose embeddings and positions are RoBERTa's."""
    family = "roberta-prelayernorm"
    loaded = checkpoints.load(family, "causal_lm")
    prompts = _prompts(loaded.config["vocab_size"])
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    new = np.random.default_rng(3).integers(PAD + 1, loaded.config["vocab_size"], size=(3, 2))
    hf_cache = DynamicCache()
    cache: dict[str, Any] = {"torch": None, "flax": None}
    for step in range(3):
        step_ids = ids if step == 0 else new[:, step - 1 : step]
        mask = mask if step == 0 else np.concatenate([mask, np.ones((3, 1), mask.dtype)], axis=1)
        call = {"input_ids": step_ids, "attention_mask": mask}
        with torch.no_grad():
            reference = loaded.hf(**_tensors(call), past_key_values=hf_cache, use_cache=True)
            ours_torch = loaded.torch(**_tensors(call), past_key_values=cache["torch"], use_cache=True)
        ours_flax = loaded.flax(**call, past_key_values=cache["flax"], use_cache=True, cache_length=12)
        cache = {"torch": ours_torch.past_key_values, "flax": ours_flax.past_key_values}
        expected = {"logits": harness.to_numpy(reference.logits)}
        for name, ours in (("torch", ours_torch), ("flax", ours_flax)):
            harness.compare(
                f"{family} cached step {name} vs HF torch", {"logits": harness.to_numpy(ours.logits)}, expected
            )


def test_greedy_generation_matches_hf(checkpoints: harness.CheckpointCache) -> None:
    """16 greedy tokens from padded prompts: the same tokens as HF's ``generate`` in both backends (which,
    as HF's ``generate``, passes position ids counted from the attention mask)."""
    loaded = checkpoints.load("roberta", "causal_lm")
    prompts = _prompts(loaded.config["vocab_size"], right_padding=False)
    with torch.no_grad():
        reference = loaded.hf.generate(**_tensors(prompts), do_sample=False, max_new_tokens=16).numpy()
    for name, model in (("torch", loaded.torch), ("flax", loaded.flax)):
        ids = harness.to_numpy(tandem.generate(model, **prompts, max_new_tokens=16)).astype(np.int64)
        np.testing.assert_array_equal(ids, reference, err_msg=name)


def test_default_positions_must_fit_the_table(checkpoints: harness.CheckpointCache) -> None:
    """Positions start at pad_token_id + 1, so max_position_embeddings - pad_token_id - 1 tokens fit: one
    more is the same clear error in both backends (HF PyTorch fails with an index error)."""
    loaded = checkpoints.load("roberta", "base")
    fits = loaded.config["max_position_embeddings"] - PAD - 1
    ids = np.full((1, fits + 1), PAD + 1)
    for model in (loaded.torch, loaded.flax):
        with pytest.raises(ValueError, match=f"truncate the input to at most {fits} tokens"):
            model(input_ids=ids if model is loaded.flax else torch.from_numpy(ids))
    out = loaded.torch(input_ids=torch.from_numpy(ids[:, :fits]))
    assert out.last_hidden_state.shape == (1, fits, loaded.config["hidden_size"])


@pytest.mark.parametrize(
    ("config_class", "kwargs", "message"),
    [
        ("RobertaConfig", {"pad_token_id": None}, "pad_token_id"),
        ("XLMRobertaConfig", {"pad_token_id": 600, "vocab_size": 1000}, "position table"),
        ("CamembertConfig", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ("RobertaPreLayerNormConfig", {"add_cross_attention": True}, "is_decoder"),
    ],
)
def test_config_validation(config_class: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        getattr(tandem, config_class)(**kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_defaults_are_hf(family: str) -> None:
    """Every field of tandem's config class defaults to what HF's config class says, and ``model_type`` is
    HF's."""
    import transformers

    ours = tandem.core.FAMILIES[family].config_class()
    theirs = getattr(transformers, REFERENCES[family].config_class)()
    assert type(ours).model_type == theirs.model_type == family
    for name in type(ours).model_fields:
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize(("family", "task"), [("roberta", "multiple_choice"), ("roberta-prelayernorm", "masked_lm")])
def test_hf_flax_checkpoints_load(family: str, task: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """A ``flax_model.msgpack`` written by HF Flax's own ``save_pretrained`` (its class in ``architectures``)
    loads in both backends and gives the outputs of the HF PyTorch checkpoint it came from."""
    loaded = checkpoints.load(family, task)
    hf_flax = loaded.hf_flax
    with harness.quiet():
        hf_flax.model.save_pretrained(tmp_path, params=hf_flax.params)
    batch = harness.case_batch(loaded)
    expected = harness.run_torch(loaded.torch, batch)
    for backend in ("torch", "flax"):
        model = tandem.from_pretrained(tmp_path, backend=backend)
        assert model.task == task
        run = harness.run_torch if backend == "torch" else harness.run_flax
        harness.compare(f"{family} HF Flax checkpoint in {backend}", run(model, batch), expected)


def test_convert_and_saves_load_in_hf(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """``tandem convert`` to HF Flax's msgpack and back loads with the same outputs, and HF PyTorch's class
    loads what tandem's flax model saves (pre-LN names, the final norm, the tied LM head)."""
    from tandem.tools.cli import main

    loaded = checkpoints.load("roberta-prelayernorm", "masked_lm")
    batch = harness.case_batch(loaded)
    expected = harness.run_torch(loaded.hf, batch)
    assert main(["convert", "--to", "flax", "--quiet", str(loaded.directory), str(tmp_path / "flax")]) == 0
    assert main(["convert", "--to", "torch", "--quiet", str(tmp_path / "flax"), str(tmp_path / "torch")]) == 0
    for path, backend in ((tmp_path / "flax", "flax"), (tmp_path / "torch", "torch")):
        model = tandem.from_pretrained(path, backend=backend)
        run = harness.run_torch if backend == "torch" else harness.run_flax
        harness.compare(f"converted to {backend}", run(model, batch), expected)
    tandem.save_pretrained(loaded.flax, tmp_path / "saved")
    hf = hf_torch_model(tmp_path / "saved", "roberta-prelayernorm", "masked_lm")
    harness.compare("HF torch on tandem's save", harness.run_torch(hf, batch), expected)
