"""Compile a layer graph into a ``torch.nn.Module`` whose ``state_dict`` is an HF PyTorch checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core import nodes as n
from ...core.call import INPUTS, Runtime, check_input_names, plan_call, resolve_use_cache, run_call
from ...core.config import FamilyConfig
from ...core.outputs import ModelOutput, finish
from ...core.params import param_entries, torch_aliases
from ...core.validation import check_values, value_ranges
from ..methods import PretrainedMethods
from . import nodes as ops
from .arrays import TorchOps, as_tensor, spec


class Scope(nn.Module):
    """A container module along a parameter path; calling it runs ``fn(*args)`` inside its hooks (a sharded
    model runs each layer through its scope, so that FSDP gathers the layer's parameters around it)."""

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def _attach(root: nn.Module, key: str, param: nn.Parameter) -> None:
    """Register ``param`` at dotted ``key``, creating :class:`Scope` containers along the way."""
    *scopes, name = key.split(".")
    module = root
    for scope in scopes:
        if scope not in module._modules:
            module.add_module(scope, Scope())
        module = module._modules[scope]
    module.register_parameter(name, param)


class TorchModel(nn.Module, PretrainedMethods):
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
    sharding: Any = None  # a sharded model's :class:`~.sharding.Sharding` (how its calls read parameters)

    def __init__(
        self, graph: n.ModelGraph, config: FamilyConfig, weights: Mapping[str, np.ndarray] | None
    ) -> None:
        """``weights=None``: parameters on the meta device, to be sharded and filled (``sharding.py``)."""
        super().__init__()
        self.graph = graph
        self.config = config
        for entry in param_entries(graph):
            if weights is None:
                value = torch.empty(entry.spec.shape, device="meta")
            else:
                value = torch.from_numpy(np.array(weights[entry.key], copy=True))
            _attach(self, entry.key, nn.Parameter(value))
        for alias, canonical in torch_aliases(graph).items():
            _attach(self, alias, self.get_parameter(canonical))

    @property
    def task(self) -> str:
        return self.graph.task

    def _frozen(self, key: str) -> bool:
        return not self.get_parameter(key).requires_grad

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
        return_dict: bool = True,
        **labels: Tensor,
    ) -> ModelOutput | tuple[Any, ...]:
        """Run the model. Label keyword arguments are the task's (``labels``, ``start_positions``...), plus
        its extra inputs (``question_lengths``); ``block_sparse_seed`` seeds block-sparse random blocks in
        training; ``return_dict=False`` returns the output's ``to_tuple()``, as HF's models do.

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
        check_input_names(graph, labels)
        extras = {k: labels.pop(k) for k in graph.extra_inputs() if k in labels}
        use_cache = resolve_use_cache(graph, use_cache, past_key_values is not None, bool(labels))
        past = _check_past(graph.backbone.encoder, past_key_values)
        device = next(self.parameters()).device
        arrays = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "head_mask": head_mask,
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
            **extras,
        }
        arrays = {k: as_tensor(v, device) for k, v in arrays.items()}
        labels = {k: as_tensor(v, device) for k, v in labels.items()}
        past_length = 0 if past is None else past[0][0].shape[2]
        plan = plan_call(
            graph,
            {k: spec(v) for k, v in arrays.items()},
            {k: spec(v) for k, v in labels.items()},
            past_length=None if past is None else past_length,
            cached_cross=past is not None and len(past[0]) == 4,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=self.training,
        )
        check_values(graph, value_ranges({**arrays, **labels}, _host_range), plan.num_choices)
        params = dict(self.named_parameters(remove_duplicate=False))
        ctx = ops.Context(
            params=params,
            training=self.training,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            block_sparse=plan.block_sparse,
            block_sparse_seed=block_sparse_seed,
        )
        if self.sharding is not None:
            self.sharding.prepare(ctx)
        rows = arrays["input_ids"] if input_ids is not None else arrays["inputs_embeds"]
        runtime = Runtime("torch", ops.IMPLS, TorchOps(rows.device, next(iter(params.values())).dtype), ctx)
        out = run_call(
            graph,
            plan,
            {k: arrays[k] for k in (*INPUTS, *extras)},
            labels,
            runtime,
            head_mask=arrays["head_mask"],
            encoder_states=arrays["encoder_hidden_states"],
            encoder_mask=arrays["encoder_attention_mask"],
            past=past,
            position_start=past_length,
        )
        if "past_key_values" in out:
            out["past_key_values"] = tuple(out["past_key_values"])
        return finish(out, return_dict)


def _host_range(x: Tensor) -> tuple[int, int] | None:
    """(min, max) of an integer tensor (one device sync); None for a meta tensor (no values)."""
    return None if x.is_meta else (int(x.min()), int(x.max()))


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
