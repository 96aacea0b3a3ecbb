"""Framework-free rules for decoder calls (KV cache, encoder states), shared by both backends."""

from __future__ import annotations

from .nodes import ModelGraph


def resolve_use_cache(graph: ModelGraph, use_cache: bool | None, has_past: bool, has_labels: bool) -> bool:
    """Whether a call returns ``past_key_values``, following HF PyTorch.

    Unset: the graph's default (``config.use_cache`` for decoders), or True when a cache is passed in.
    Calls with labels (training) return no cache, as HF's causal-LM heads do. A cache on a model whose
    self-attention is not causal is an error: later positions would change earlier ones.
    """
    if (use_cache or has_past) and not graph.is_decoder:
        raise ValueError(
            f"{graph.family} {graph.task} is not a decoder (its self-attention is not causal), so it cannot use a "
            "KV cache (use_cache / past_key_values); build it with is_decoder=True to decode incrementally"
        )
    if has_labels:
        return False
    if use_cache is None:
        return graph.use_cache or has_past
    return use_cache


def check_encoder_inputs(graph: ModelGraph, has_states: bool, has_mask: bool, cached: bool) -> None:
    """``encoder_hidden_states`` need cross-attention layers; an encoder mask needs encoder states or a
    cache holding their keys/values (``cached``)."""
    if has_states and not graph.has_cross_attention:
        raise ValueError(
            f"encoder_hidden_states were given but {graph.family} {graph.task} has no cross-attention layers; "
            "build the decoder with add_cross_attention=True"
        )
    if has_mask and not (has_states or cached):
        raise ValueError("encoder_attention_mask was given without encoder_hidden_states")
