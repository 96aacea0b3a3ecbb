"""Compile a layer graph into a ``torch.nn.Module`` whose ``state_dict`` is an HF PyTorch checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core import nodes as n
from ...core.config import FamilyConfig
from ...core.decoding import check_encoder_inputs, resolve_use_cache
from ...core.outputs import ModelOutput
from ...core.params import param_entries, torch_aliases
from . import nodes as ops


def _attach(root: nn.Module, key: str, param: nn.Parameter) -> None:
    """Register ``param`` at dotted ``key``, creating plain container modules along the way."""
    *scopes, name = key.split(".")
    module = root
    for scope in scopes:
        if scope not in module._modules:
            module.add_module(scope, nn.Module())
        module = module._modules[scope]
    module.register_parameter(name, param)


class TorchModel(nn.Module):
    """A compiled graph. Call it with keyword tensors; it returns a :class:`ModelOutput`.

    The module tree holds exactly the graph's declared parameters at their HF paths (plus HF's tied
    aliases, which are the same ``Parameter`` objects), so ``state_dict()`` keys are HF PyTorch's. Like any
    ``nn.Module`` it starts in training mode when constructed directly; :func:`tandem.build` and
    :func:`tandem.from_pretrained` return it in eval mode, as HF does.

    Example:
        >>> model = tandem.build(config, task="masked_lm", backend="torch")
        >>> out = model(input_ids=torch.tensor([[101, 2023, 102]]))
        >>> out.logits.shape
        torch.Size([1, 3, 30522])
    """

    backend = "torch"

    def __init__(self, graph: n.ModelGraph, config: FamilyConfig, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.graph = graph
        self.config = config
        for entry in param_entries(graph):
            value = torch.from_numpy(np.array(weights[entry.key], copy=True))
            _attach(self, entry.key, nn.Parameter(value))
        for alias, canonical in torch_aliases(graph).items():
            _attach(self, alias, self.get_parameter(canonical))

    @property
    def task(self) -> str:
        return self.graph.task

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        head_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        past_key_values: tuple[ops.CacheEntry, ...] | None = None,
        use_cache: bool | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        block_sparse_seed: int = 0,
        **labels: Tensor,
    ) -> ModelOutput:
        """Run the model. Label keyword arguments are the task's (``labels``, ``start_positions``...), plus
        its extra inputs (``question_lengths``); ``block_sparse_seed`` seeds block-sparse random blocks in
        training.

        Decoders (causal self-attention) also take, as HF PyTorch's:

        - ``encoder_hidden_states`` (B, Se, H) and ``encoder_attention_mask`` (B, Se) for cross-attention;
        - ``use_cache``: return ``past_key_values``, one ``(key, value[, cross_key, cross_value])`` tuple of
          (B, heads, length, head_dim) tensors per layer run (HF's legacy cache format; unset: the config's
          ``use_cache``, off when labels are given);
        - ``past_key_values``: continue from such a cache. ``attention_mask`` then covers the cached and the
          new positions (B, past + S), positions default to ``past .. past + S - 1``, and cached
          cross-attention keys/values are reused (``encoder_hidden_states`` may be left out).
        """
        graph = self.graph
        accepted = graph.label_names() + graph.extra_inputs()
        unknown = sorted(set(labels) - set(accepted))
        if unknown:
            raise TypeError(
                f"{graph.family} {graph.task} got unexpected keyword argument(s) {unknown}; it accepts {list(accepted)}"
            )
        extras = {k: labels.pop(k) for k in graph.extra_inputs() if k in labels}
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        use_cache = resolve_use_cache(graph, use_cache, past_key_values is not None, bool(labels))
        past = _check_past(graph.backbone.encoder, past_key_values)
        check_encoder_inputs(
            graph,
            encoder_hidden_states is not None,
            encoder_attention_mask is not None,
            cached=past is not None and len(past[0]) == 4,
        )
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        num_choices = None
        if graph.multiple_choice:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            if reference.dim() != 3:
                raise ValueError(
                    f"multiple_choice inputs must be (batch, choices, length), got {tuple(reference.shape)}"
                )
            num_choices = reference.shape[1]
            inputs = {k: None if v is None else v.reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
        ctx = ops.Context(
            params=dict(self.named_parameters(remove_duplicate=False)),
            training=self.training,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            block_sparse_seed=block_sparse_seed,
        )
        cross = _cross_inputs(encoder_hidden_states, encoder_attention_mask, past)
        outputs = self._run(inputs, extras, head_mask, ctx, cross, past, use_cache)
        if num_choices is not None:
            outputs["logits"] = outputs["logits"].reshape(-1, num_choices)
        result = ModelOutput()
        terms = graph.loss_terms(labels)
        if terms:
            result["loss"] = sum(ops.loss(term, outputs, labels) for term in terms)
        result.update(outputs)
        return result

    def _run(
        self,
        inputs: dict[str, Tensor | None],
        extras: dict[str, Tensor],
        head_mask: Tensor | None,
        ctx: ops.Context,
        cross: ops.CrossInputs | None,
        past: tuple[ops.CacheEntry, ...] | None,
        use_cache: bool,
    ) -> dict[str, Any]:
        graph = self.graph
        backbone = graph.backbone
        ids, embeds = inputs["input_ids"], inputs["inputs_embeds"]
        batch, length = ids.shape if ids is not None else embeds.shape[:2]
        device = ids.device if ids is not None else embeds.device
        past_length = 0 if past is None else past[0][0].shape[2]
        mask = inputs["attention_mask"]
        if mask is None:
            mask = torch.ones(batch, past_length + length, dtype=torch.long, device=device)
        elif mask.shape[-1] != past_length + length:
            raise ValueError(
                f"attention_mask must cover the {past_length} cached and {length} new positions "
                f"(length {past_length + length}), got shape {tuple(mask.shape)}"
            )
        token_type_ids = inputs["token_type_ids"]
        position_ids = inputs["position_ids"]
        logits_mask = _question_mask(graph, ids, extras.get("question_lengths"), length)
        if token_type_ids is None:
            # A masked span head makes everything after the question segment 1 (as HF does for question answering).
            token_type_ids = (
                torch.zeros(batch, length, dtype=torch.long, device=device) if logits_mask is None else 1 - logits_mask
            )
        if logits_mask is not None:
            logits_mask[:, 0] = 0
        path = backbone.path
        emb = backbone.embeddings
        emb_path = n.join(path, emb.path)
        policy = backbone.block_sparse
        ctx.block_sparse = policy is not None and length > policy.min_length
        if ctx.block_sparse:
            pad = (-length) % policy.block_size
            if pad:
                mask = F.pad(mask, (0, pad), value=0)
                token_type_ids = F.pad(token_type_ids, (0, pad), value=0)
                if position_ids is not None:
                    position_ids = F.pad(position_ids, (0, pad), value=policy.pad_token_id)
                if ids is not None:
                    ids = F.pad(ids, (0, pad), value=policy.pad_token_id)
                else:
                    # HF PyTorch pads given embeddings with the embedding-module output of pad tokens.
                    pad_ids = torch.full((batch, pad), policy.pad_token_id, dtype=torch.long, device=device)
                    pad_rows = ops.embeddings(
                        emb,
                        emb_path,
                        pad_ids,
                        torch.zeros_like(pad_ids),
                        torch.arange(pad, device=device)[None],
                        None,
                        ctx,
                    )
                    embeds = torch.cat([embeds, pad_rows], dim=1)
        if position_ids is None:  # HF PyTorch: offset by the cached length
            position_ids = torch.arange(past_length, mask.shape[1], device=device)[None, :]
        dtype = next(iter(ctx.params.values())).dtype
        x = ops.embeddings(emb, emb_path, ids, token_type_ids, position_ids, embeds, ctx)
        enc = backbone.encoder
        encoded = ops.encoder(enc, n.join(path, enc.path), x, mask, _head_mask(head_mask, enc, dtype), ctx, cross, past)
        x = encoded.hidden
        pooled = None
        if backbone.pooler is not None:
            pooled = ops.pooler(backbone.pooler, n.join(path, backbone.pooler.path), x, ctx)
        x = x[:, :length]  # cut block-sparse padding; hidden states and attentions keep it, as in HF
        out: dict[str, Any] = {}
        for head in graph.heads:
            head_path = head.path
            if isinstance(head, n.LMHead):
                out[head.output] = ops.lm_head(head, head_path, x, ctx)
                continue
            if isinstance(head, n.ClassificationHead):
                out[head.output] = ops.classification_head(head, head_path, x, ctx)
                continue
            if isinstance(head, n.SpanHead):
                logits = ops.span_head(head, head_path, x, ctx)
                if logits_mask is not None:
                    logits = logits - logits_mask[:, :, None] * head.question_mask.penalty
            else:
                logits = ops.dense_head(head, head_path, pooled if head.source == "pooled" else x, ctx)
            if head.split is None:
                out[head.output] = logits
            else:
                for name, part in zip(head.split, logits.split(1, dim=-1), strict=True):
                    out[name] = part[..., 0].contiguous()
        if "last_hidden_state" in graph.expose:
            out["last_hidden_state"] = x
        if "pooler_output" in graph.expose and pooled is not None:
            out["pooler_output"] = pooled
        if use_cache:
            out["past_key_values"] = tuple(encoded.cache)
        if ctx.output_hidden_states:
            out["hidden_states"] = tuple(encoded.hidden_states)
        if ctx.output_attentions:
            out["attentions"] = tuple(encoded.attentions)
            if encoded.cross_attentions:
                out["cross_attentions"] = tuple(encoded.cross_attentions)
        return out


def _check_past(encoder: n.Encoder, past: Any) -> tuple[ops.CacheEntry, ...] | None:
    """The cache as a tuple of per-run tuples, or a clear error when it does not fit the model."""
    if past is None:
        return None
    runs = len(encoder.runs)
    if (
        not isinstance(past, (tuple, list))
        or len(past) != runs
        or any(not isinstance(e, (tuple, list)) or len(e) not in (2, 4) for e in past)
    ):
        raise ValueError(
            f"past_key_values must hold {runs} entries (one per layer run) of (key, value) or (key, value, "
            "cross_key, cross_value) tensors of shape (batch, heads, length, head_dim), as returned by a call "
            f"with use_cache=True; got {type(past).__name__}"
            + (f" of {len(past)} entries" if isinstance(past, (tuple, list)) else "")
            + " (convert a flax cache with tandem.convert_cache)"
        )
    return tuple(tuple(e) for e in past)


def _cross_inputs(
    states: Tensor | None, mask: Tensor | None, past: tuple[ops.CacheEntry, ...] | None
) -> ops.CrossInputs | None:
    """The encoder inputs of a call; with cross keys/values in the cache, the states are not needed."""
    cached = past is not None and len(past[0]) == 4
    if states is None and not cached:
        return None
    if mask is None:
        reference = states if states is not None else past[0][2]
        length = reference.shape[-2]
        mask = torch.ones(reference.shape[0], length, dtype=torch.long, device=reference.device)
    return ops.CrossInputs(states=None if cached else states, mask=mask)


def _question_mask(
    graph: n.ModelGraph, ids: Tensor | None, question_lengths: Tensor | None, length: int
) -> Tensor | None:
    """1 on question positions (before and at the first separator) for a masked span head, else None."""
    spec = next((h.question_mask for h in graph.heads if isinstance(h, n.SpanHead) and h.question_mask), None)
    if spec is None:
        return None
    if question_lengths is None:
        if ids is None:
            return None
        question_lengths = (torch.argmax(ids.eq(spec.sep_token_id).int(), dim=-1) + 1)[:, None]
    positions = torch.arange(length, device=question_lengths.device)[None, :]
    return (positions < question_lengths.reshape(-1, 1)).long()


def _head_mask(head_mask: Tensor | None, encoder: n.Encoder, dtype: torch.dtype) -> Tensor | None:
    """HF's ``get_head_mask``: (heads,) or (rows, heads) -> (rows, 1, heads, 1, 1) in the param dtype."""
    if head_mask is None:
        return None
    unsupported = [layer.path for layer in encoder.layers if not layer.attention.attention.supports_head_mask]
    if unsupported:
        raise ValueError(f"head_mask is not supported by this model (layers {', '.join(unsupported)}); pass None")
    if any(row is None for rows in encoder.head_mask_index for row in rows):
        raise ValueError("head_mask is not supported for this configuration: some layer runs have no head-mask row")
    heads = encoder.layers[0].attention.attention.num_heads
    rows = encoder.num_head_mask_rows
    if head_mask.dim() == 1:
        head_mask = head_mask[None].expand(rows, -1)
    if head_mask.dim() != 2 or head_mask.shape[1] != heads or head_mask.shape[0] != rows:
        raise ValueError(f"head_mask must be ({heads},) or ({rows}, {heads}), got {tuple(head_mask.shape)}")
    return head_mask[:, None, :, None, None].to(dtype)
