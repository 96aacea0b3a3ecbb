"""Decoders: causal LM (with and without cross-attention), KV caches, generation, bert2bert.

References are HF PyTorch's ``BertLMHeadModel`` (eager attention) and ``EncoderDecoderModel`` with HF's own
init plus a perturbation, saved with ``save_pretrained`` and loaded by ``tandem.from_pretrained``. Every
comparison is a whole tensor within ``harness.ATOL``; generated tokens must be identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import tandem
from tandem.backends.flax.program import decode_step
from tandem.core.params import flatten_tree

# The shared tiny config as a decoder; 7 prompt tokens + 32 new ones fit its 40 positions.
DECODER: dict[str, Any] = {"is_decoder": True}
CROSS: dict[str, Any] = {"is_decoder": True, "add_cross_attention": True}
ENCODER_LENGTH = 6
NEW_TOKENS = 32


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """HF's init zeroes biases and sets LayerNorms to (1, 0); perturb every parameter so none is trivial."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


@dataclass
class Decoder:
    """An HF ``BertLMHeadModel`` checkpoint and tandem's two loads of it."""

    name: str
    directory: Path
    config: dict[str, Any]
    hf: torch.nn.Module
    torch: Any
    flax: Any

    @property
    def cross(self) -> bool:
        return bool(self.config.get("add_cross_attention"))


def _make_decoder(directory: Path, name: str, overrides: dict[str, Any], seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    hf = _perturbed(transformers.BertLMHeadModel(harness.hf_config("bert", overrides=overrides)), seed)
    hf.save_pretrained(directory, safe_serialization=True)
    return Decoder(
        name=name,
        directory=directory,
        config={**harness.TINY, **overrides},
        hf=hf,
        torch=tandem.from_pretrained(directory, backend="torch"),
        flax=tandem.from_pretrained(directory, backend="flax"),
    )


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Decoder]:
    """Made on first use and shared, so each flax model's compiled programs are reused across tests."""
    return {}


def _get(decoders: dict[str, Decoder], name: str, tmp_path_factory: pytest.TempPathFactory) -> Decoder:
    if name not in decoders:
        overrides = DECODER if name == "decoder" else CROSS
        decoders[name] = _make_decoder(tmp_path_factory.mktemp(name), name, overrides)
    return decoders[name]


@pytest.fixture(params=["decoder", "cross_attention"])
def decoder(
    request: pytest.FixtureRequest, decoders: dict[str, Decoder], tmp_path_factory: pytest.TempPathFactory
) -> Decoder:
    """Each test on a plain decoder and on a decoder with cross-attention."""
    return _get(decoders, request.param, tmp_path_factory)


@pytest.fixture
def cross_decoder(decoders: dict[str, Decoder], tmp_path_factory: pytest.TempPathFactory) -> Decoder:
    """The decoder with cross-attention, for checks whose plain-decoder case it covers."""
    return _get(decoders, "cross_attention", tmp_path_factory)


def _encoder_inputs(case: Decoder, batch: int, seed: int = 5) -> dict[str, np.ndarray]:
    """Random encoder states and a padded encoder mask (empty for a decoder without cross-attention)."""
    if not case.cross:
        return {}
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((batch, ENCODER_LENGTH, case.config["hidden_size"])).astype(np.float32)
    mask = np.ones((batch, ENCODER_LENGTH), np.int64)
    mask[0, -2:] = 0
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}


def _batch(case: Decoder, mask_patterns: tuple[int, ...] = (0, 1, 2, 4), seed: int = 0) -> harness.Batch:
    """Padded rows (full, right-padded, left-padded, a hole) with causal-LM labels (-100 on padding)."""
    batch = harness.make_batch("masked_lm", case.config, seed=seed, batch=4, mask_patterns=mask_patterns)
    batch.inputs.update(_encoder_inputs(case, 4))
    return batch


def _torch_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _cache_arrays(cache: Any) -> dict[str, np.ndarray]:
    """A cache (either backend) as named torch-layout arrays, so caches compare like outputs."""
    if not isinstance(cache, tuple):
        cache = tandem.convert_cache(cache, to="torch")
    return {
        f"past_key_values.{i}.{j}": harness.to_numpy(t) for i, entry in enumerate(cache) for j, t in enumerate(entry)
    }


# ---------------------------------------------------------------------------------------------- forward
def test_causal_lm_forward_matches_hf(decoder: Decoder) -> None:
    """Logits, shifted loss, hidden states, attentions and cross-attentions vs HF PyTorch, both backends."""
    assert decoder.torch.task == decoder.flax.task == "causal_lm"
    batch = _batch(decoder, mask_patterns=(0, 1, 2, 3, 4))  # a fully masked row too
    flags = {"output_hidden_states": True, "output_attentions": True}
    hf = harness.run_torch(decoder.hf, batch, **flags)
    ours_torch = harness.run_torch(decoder.torch, batch, **flags)
    ours_flax = harness.run_flax(decoder.flax, batch, **flags)
    assert "loss" in hf and ("cross_attentions.0" in hf) == decoder.cross
    harness.same_fields("torch vs HF torch", ours_torch, hf)
    harness.same_fields("flax vs HF torch", ours_flax, hf)
    harness.compare("causal LM torch vs HF torch", ours_torch, hf)
    harness.compare("causal LM flax vs HF torch", ours_flax, hf)
    harness.compare("causal LM torch vs flax", ours_torch, ours_flax)


def test_cache_matches_hf(decoder: Decoder) -> None:
    """Without labels a decoder returns its KV cache (config.use_cache), as HF PyTorch does."""
    batch = _batch(decoder)
    with torch.no_grad():
        hf = decoder.hf(**batch.torch(with_labels=False), use_cache=True)
    legacy = hf.past_key_values.to_legacy_cache()
    reference = _cache_arrays(tuple(entry if decoder.cross else entry[:2] for entry in legacy))
    reference["logits"] = harness.to_numpy(hf.logits)
    with torch.no_grad():
        ours_torch = decoder.torch(**batch.torch(with_labels=False))
    ours_flax = decoder.flax(**batch.numpy(with_labels=False))
    assert ours_flax.past_key_values.max_length == decoder.config["max_position_embeddings"]
    for name, ours in (("torch", ours_torch), ("flax", ours_flax)):
        flat = {**_cache_arrays(ours.past_key_values), "logits": harness.to_numpy(ours.logits)}
        harness.compare(f"cache {name} vs HF torch", flat, reference)


def test_incremental_decoding_equals_full_forward(decoder: Decoder) -> None:
    """A prompt, then one token per call (and a two-token chunk) from the cache, equals the full forward
    at every real position, in each backend; the two backends agree at every position."""
    batch = _batch(decoder)
    inputs = batch.numpy(with_labels=False)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    encoder = _encoder_inputs(decoder, ids.shape[0])
    length = ids.shape[1]
    cuts = [4, 5, 6, 8, length]  # prompt of 4, then 1, 1, 2 and 1 tokens
    steps: dict[str, list[np.ndarray]] = {"torch": [], "flax": []}
    cache: dict[str, Any] = {"torch": None, "flax": None}
    for start, stop in zip([0, *cuts[:-1]], cuts, strict=True):
        call = {
            "input_ids": ids[:, start:stop],
            "attention_mask": mask[:, :stop],
            "token_type_ids": inputs["token_type_ids"][:, start:stop],
            **({"encoder_attention_mask": encoder["encoder_attention_mask"]} if encoder else {}),
        }
        if start == 0 and encoder:
            call["encoder_hidden_states"] = encoder["encoder_hidden_states"]
        with torch.no_grad():
            out = decoder.torch(**_torch_tensors(call), past_key_values=cache["torch"], use_cache=True)
        cache["torch"] = out.past_key_values
        steps["torch"].append(harness.to_numpy(out.logits))
        out = decoder.flax(**call, past_key_values=cache["flax"], use_cache=True, cache_length=length + 3)
        cache["flax"] = out.past_key_values
        steps["flax"].append(harness.to_numpy(out.logits))
    assert int(cache["flax"].length) == length and cache["flax"].max_length == length + 3
    with torch.no_grad():
        full = harness.to_numpy(decoder.hf(**_torch_tensors({**inputs, **encoder}), use_cache=False).logits)
    real = mask.astype(bool)
    incremental = {name: np.concatenate(parts, axis=1) for name, parts in steps.items()}
    for name, logits in incremental.items():
        harness.compare(f"incremental {name} vs HF full forward", {"logits": logits[real]}, {"logits": full[real]})
    harness.compare("incremental torch vs flax", {"logits": incremental["torch"]}, {"logits": incremental["flax"]})


def test_cache_converts_between_backends(cross_decoder: Decoder) -> None:
    """A torch cache continued in flax (and back) gives the same next logits (self and cross entries)."""
    case = cross_decoder
    ids = np.random.default_rng(1).integers(1, case.config["vocab_size"], size=(2, 6))
    encoder = _encoder_inputs(case, 2)
    prompt = {"input_ids": ids[:, :5], **encoder}
    step = {"input_ids": ids[:, 5:], "encoder_attention_mask": encoder["encoder_attention_mask"]}
    with torch.no_grad():
        torch_out = case.torch(**_torch_tensors(prompt), use_cache=True)
        expected = {
            "logits": harness.to_numpy(
                case.torch(**_torch_tensors(step), past_key_values=torch_out.past_key_values).logits
            )
        }
    flax_cache = tandem.convert_cache(torch_out.past_key_values, to="flax", max_length=8)
    assert flax_cache.max_length == 8 and int(flax_cache.length) == 5
    harness.compare(
        "cache torch -> flax",
        {"logits": harness.to_numpy(case.flax(**step, past_key_values=flax_cache).logits)},
        expected,
    )
    flax_out = case.flax(**prompt, use_cache=True, cache_length=8)
    back = tandem.convert_cache(flax_out.past_key_values, to="torch")
    with torch.no_grad():
        again = case.torch(**_torch_tensors(step), past_key_values=back)
    harness.compare("cache flax -> torch", {"logits": harness.to_numpy(again.logits)}, expected)


# ------------------------------------------------------------------------------------------- generation
def _prompts(case: Decoder) -> dict[str, np.ndarray]:
    """Left-padded (by 2 and by 4) and unpadded rows, pad id 0 on padding; encoder inputs for cross-attention."""
    rng = np.random.default_rng(11)
    ids = rng.integers(1, case.config["vocab_size"], size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask, **_encoder_inputs(case, 3)}


def _hf_generate(case: Decoder, prompts: dict[str, np.ndarray], **kwargs: Any) -> np.ndarray:
    if case.cross:
        # HF 4.57's BertLMHeadModel.generate needs an explicit encoder-decoder cache with encoder states;
        # its default cache would append the cross-attention keys to the self-attention ones.
        kwargs["past_key_values"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        return case.hf.generate(**_torch_tensors(prompts), do_sample=False, **kwargs).numpy()


def _ids(value: Any) -> np.ndarray:
    return harness.to_numpy(value).astype(np.int64)


def test_greedy_generation_matches_hf(decoder: Decoder) -> None:
    """32 greedy tokens on a left-padded batch: identical to HF's generate in both backends; without a
    cache (the whole sequence recomputed per token) the first 8 tokens are the same."""
    prompts = _prompts(decoder)
    reference = _hf_generate(decoder, prompts, max_new_tokens=NEW_TOKENS)
    assert reference.shape == (3, 7 + NEW_TOKENS)
    for name, model in (("torch", decoder.torch), ("flax", decoder.flax)):
        ids = tandem.generate(model, **prompts, max_new_tokens=NEW_TOKENS)
        np.testing.assert_array_equal(_ids(ids), reference, err_msg=name)
        ids = tandem.generate(model, **prompts, max_new_tokens=8, use_cache=False)
        np.testing.assert_array_equal(_ids(ids), reference[:, : 7 + 8], err_msg=f"{name}, no cache")


def test_eos_then_padding_matches_hf(decoders: dict[str, Decoder], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A row that emits eos continues with pad ids; generation stops once every row has finished."""
    decoder = _get(decoders, "decoder", tmp_path_factory)
    prompts = _prompts(decoder)
    greedy = _ids(tandem.generate(decoder.flax, **prompts, max_new_tokens=NEW_TOKENS))
    eos = int(greedy[0, 9])  # row 0 finishes at its third new token at the latest
    reference = _hf_generate(decoder, prompts, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=3)
    for model in (decoder.torch, decoder.flax):
        ids = tandem.generate(model, **prompts, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=3)
        np.testing.assert_array_equal(_ids(ids), reference)
    assert (reference[0, 10:] == 3).all()
    # Each row's first new token as its eos: every row finishes at once and the output stops there.
    short = tandem.generate(decoder.flax, **prompts, max_new_tokens=NEW_TOKENS, eos_token_id=list(greedy[:, 7]))
    np.testing.assert_array_equal(_ids(short), greedy[:, :8])


def test_sampling_same_seed_same_tokens(cross_decoder: Decoder) -> None:
    """Temperature, top-k and top-p sampling draw from one seeded host generator: same seed, same tokens."""
    decoder = cross_decoder
    prompts = _prompts(decoder)
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    a = _ids(tandem.generate(decoder.torch, **prompts, seed=7, **kwargs))
    b = _ids(tandem.generate(decoder.flax, **prompts, seed=7, **kwargs))
    c = _ids(tandem.generate(decoder.flax, **prompts, seed=8, **kwargs))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    top1 = tandem.generate(decoder.torch, **prompts, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=1, seed=3)
    np.testing.assert_array_equal(_ids(top1), _ids(tandem.generate(decoder.flax, **prompts, max_new_tokens=NEW_TOKENS)))


def test_flax_decode_step_compiles_once(cross_decoder: Decoder) -> None:
    """A generation compiles two programs (prompt, one-token step) whatever its length; a rerun compiles none.
    (The step is shared by every JAX model, keyed by graph and cache size: 11 new tokens is this test's size.)"""
    model, prompts = cross_decoder.flax, _prompts(cross_decoder)
    before = decode_step._cache_size()
    tandem.generate(model, **prompts, max_new_tokens=11)
    assert decode_step._cache_size() == before + 2
    tandem.generate(model, **prompts, max_new_tokens=11)
    assert decode_step._cache_size() == before + 2


# ------------------------------------------------------------------------------------------- gradients
def test_gradients_match_hf(cross_decoder: Decoder) -> None:
    """The shifted causal-LM loss and every gradient (self- and cross-attention): torch vs HF PyTorch, flax
    vs torch. Left padding puts a label after each padded position, so fully masked causal rows are in the
    loss."""
    decoder = cross_decoder
    batch = _batch(decoder, seed=3)
    loss_t, grads_t = harness.torch_grads(decoder.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(decoder.hf, batch, list(grads_t))
    loss_f, grads_f = harness.flax_grads(decoder.flax, batch)
    reference = {"loss": np.float32(loss_hf)}
    harness.compare("causal LM loss torch vs HF", {"loss": np.float32(loss_t)}, reference)
    harness.compare("causal LM loss flax vs HF", {"loss": np.float32(loss_f)}, reference)
    harness.compare_grads("causal LM grads torch vs HF", grads_t, grads_hf)
    harness.compare_grads("causal LM grads flax vs torch", grads_f, grads_t)


# ---------------------------------------------------------------------------------------------- bert2bert
def test_bert2bert_matches_hf_encoder_decoder(tmp_path: Path) -> None:
    """A tandem encoder (base) feeding a tandem decoder (causal_lm + cross-attention) equals HF's
    ``EncoderDecoderModel`` on the same weights, in both backends; greedy generation too."""
    torch.manual_seed(0)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        harness.hf_config("bert"), harness.hf_config("bert", overrides=CROSS)
    )
    hf = _perturbed(transformers.EncoderDecoderModel(config=config), seed=0)
    hf.encoder.save_pretrained(tmp_path / "encoder", safe_serialization=True)
    hf.decoder.save_pretrained(tmp_path / "decoder", safe_serialization=True)
    rng = np.random.default_rng(2)
    source = {"input_ids": rng.integers(1, 97, size=(2, 8)), "attention_mask": np.ones((2, 8), np.int64)}
    source["attention_mask"][1, 5:] = 0
    target = rng.integers(1, 97, size=(2, 5))
    start = np.full((2, 1), 2)
    with torch.no_grad():
        reference = hf(**_torch_tensors(source), decoder_input_ids=torch.from_numpy(target)).logits.numpy()
        generated = hf.generate(**_torch_tensors(source), decoder_start_token_id=2, max_new_tokens=10).numpy()
    for backend in ("torch", "flax"):
        encoder = tandem.from_pretrained(tmp_path / "encoder", backend=backend)
        decoder = tandem.from_pretrained(tmp_path / "decoder", backend=backend)
        inputs = {**source, "target": target, "start": start}
        args = _torch_tensors(inputs) if backend == "torch" else inputs
        with torch.no_grad():
            states = encoder(input_ids=args["input_ids"], attention_mask=args["attention_mask"]).last_hidden_state
            cross = {"encoder_hidden_states": states, "encoder_attention_mask": args["attention_mask"]}
            logits = decoder(input_ids=args["target"], **cross).logits
            tokens = tandem.generate(decoder, args["start"], max_new_tokens=10, **cross)
        harness.compare(f"bert2bert {backend} vs HF", {"logits": harness.to_numpy(logits)}, {"logits": reference})
        np.testing.assert_array_equal(_ids(tokens), generated)


def test_big_bird_decoder_matches_hf(tmp_path: Path) -> None:
    """BigBird as a decoder (full attention, as HF PyTorch runs it): ``BigBirdForCausalLM`` logits, loss,
    hidden states and attentions, and 16 greedy tokens on a left-padded batch, in both backends.

    Cross-attention is not compared: HF 4.57's BigBird layer hands the encoder states to its self-attention
    too (so self-attention reads the encoder); tandem builds BigBird's cross-attention as BERT's."""
    torch.manual_seed(0)
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    config = transformers.BigBirdConfig(
        **{k: harness.TINY[k] for k in sizes},
        max_position_embeddings=64,
        initializer_range=0.2,
        is_decoder=True,
        attention_type="original_full",
        attn_implementation="eager",
    )
    hf = _perturbed(transformers.BigBirdForCausalLM(config), seed=0)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    case = Decoder(
        name="big_bird",
        directory=tmp_path,
        config={**harness.TINY, "max_position_embeddings": 64},
        hf=hf,
        torch=tandem.from_pretrained(tmp_path, backend="torch"),
        flax=tandem.from_pretrained(tmp_path, backend="flax"),
    )
    batch = _batch(case)
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference = harness.run_torch(hf, batch, **flags)
    reference = {k: v for k, v in reference.items() if not k.startswith("past_key_values")}  # HF keeps it with labels
    harness.compare("big_bird decoder torch vs HF torch", harness.run_torch(case.torch, batch, **flags), reference)
    harness.compare("big_bird decoder flax vs HF torch", harness.run_flax(case.flax, batch, **flags), reference)
    prompts = _prompts(case)
    expected = _hf_generate(case, prompts, max_new_tokens=16)
    for model in (case.torch, case.flax):
        np.testing.assert_array_equal(_ids(tandem.generate(model, **prompts, max_new_tokens=16)), expected)


# ------------------------------------------------------------------------------------- names and errors
def test_checkpoint_names_match_hf(cross_decoder: Decoder, tmp_path: Path) -> None:
    """torch state_dict keys (in order) are HF PyTorch's; the flax tree is HF Flax's ``FlaxBertForCausalLM``;
    ``save_pretrained`` writes a checkpoint HF loads as ``BertLMHeadModel``."""
    case = cross_decoder
    assert list(case.torch.state_dict()) == list(case.hf.state_dict())
    module = transformers.FlaxBertForCausalLM.module_class(harness.hf_config("bert", overrides=CROSS))
    ids = jax.numpy.ones((1, 4), jax.numpy.int32)
    states = jax.numpy.ones((1, 2, case.config["hidden_size"]))
    theirs = jax.eval_shape(
        lambda: module.init(jax.random.key(0), ids, ids, ids, ids, None, states, ids[:, :2], return_dict=False)
    )["params"]
    assert {k: v.shape for k, v in flatten_tree(theirs).items()} == {
        k: np.shape(v) for k, v in flatten_tree(case.flax.params).items()
    }
    tandem.save_pretrained(case.flax, tmp_path)
    with harness.quiet():
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert type(reloaded).__name__ == "BertLMHeadModel" and reloaded.config.add_cross_attention


def test_decoder_errors(cross_decoder: Decoder) -> None:
    case = cross_decoder
    ids = np.array([[5, 6, 7]])
    with pytest.raises(ValueError, match="needs is_decoder=True"):
        tandem.BertConfig(add_cross_attention=True)
    out = case.flax(input_ids=ids, use_cache=True, cache_length=4, **_encoder_inputs(case, 1))
    with pytest.raises(ValueError, match="max_length=4"):
        case.flax(input_ids=ids[:, :2], past_key_values=out.past_key_values)
    with pytest.raises(ValueError, match="FlaxCache"):
        case.flax(input_ids=ids, past_key_values=((ids, ids),))
    with pytest.raises(ValueError, match="must hold 2 entries"):
        case.torch(input_ids=torch.from_numpy(ids), past_key_values=out.past_key_values)
    with pytest.raises(ValueError, match="attention_mask must cover"):
        case.torch(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="position table"):
        tandem.generate(case.torch, ids, max_new_tokens=40)
    with pytest.raises(ValueError, match="only apply when sampling"):
        tandem.generate(case.torch, ids, temperature=0.5)


def test_encoders_refuse_caches() -> None:
    """A model whose self-attention is not causal has no cache and cannot generate."""
    model = tandem.build(tandem.BertConfig(**harness.TINY), task="masked_lm", backend="torch")
    ids = torch.tensor([[5, 6, 7]])
    assert "past_key_values" not in model(input_ids=ids)
    with pytest.raises(ValueError, match="not a decoder"):
        model(input_ids=ids, use_cache=True)
    with pytest.raises(ValueError, match="no cross-attention layers"):
        model(input_ids=ids, encoder_hidden_states=torch.zeros(1, 2, harness.TINY["hidden_size"]))
    with pytest.raises(ValueError, match="generate needs a decoder"):
        tandem.generate(model, ids, max_new_tokens=2)
