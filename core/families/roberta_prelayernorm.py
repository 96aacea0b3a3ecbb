"""RoBERTa-PreLayerNorm: RoBERTa with pre-LN layers and a LayerNorm after the encoder.

HF's names: each attention module normalises its input with its own ``LayerNorm`` (``attention.LayerNorm``,
``crossattention.LayerNorm``) and its ``output`` is a plain residual; ``intermediate.LayerNorm`` normalises
the feed-forward's input and ``output`` is again a plain residual; ``roberta_prelayernorm.LayerNorm``
normalises the encoder's output (``last_hidden_state``, the pooler's input; ``hidden_states`` are the
encoder's, before it).
"""

from __future__ import annotations

from typing import ClassVar

from ..nodes import AttentionBlock, ModelGraph, TransformerLayer
from . import bert
from .roberta import RobertaConfig, roberta_backbone, roberta_tasks
from .tasks import Task, build_task_graph


class RobertaPreLayerNormConfig(RobertaConfig):
    """HF ``RobertaPreLayerNormConfig``: RoBERTa's fields and defaults (``vocab_size`` 50265, ``pad_token_id`` 1)."""

    model_type: ClassVar[str] = "roberta-prelayernorm"


def _pre_ln(block: AttentionBlock) -> AttentionBlock:
    """A post-LN attention block with its norm moved before the attention (HF's ``attention.LayerNorm``)."""
    output = block.output.model_copy(update={"norm": None})
    return block.model_copy(update={"output": output, "norm": block.output.norm})


def _layer(config: RobertaPreLayerNormConfig, index: int) -> TransformerLayer:
    """BERT's layer with every LayerNorm moved before its sublayer, under HF's pre-LN names."""
    post = bert._layer(config, index)
    return post.model_copy(
        update={
            "attention": _pre_ln(post.attention),
            "crossattention": None if post.crossattention is None else _pre_ln(post.crossattention),
            "ffn_norm": post.output.norm.model_copy(update={"path": "intermediate.LayerNorm"}),
            "output": post.output.model_copy(update={"norm": None}),
        }
    )


TASKS: dict[str, Task] = roberta_tasks("RobertaPreLayerNorm")


def build_roberta_prelayernorm(config: RobertaPreLayerNormConfig, task: str) -> ModelGraph:
    """Compile a :class:`RobertaPreLayerNormConfig` and a task name into the layer graph of HF's matching class."""
    backbone = roberta_backbone(_layer, final_norm=True)
    use_cache = config.use_cache and config.is_decoder
    return build_task_graph(
        "roberta-prelayernorm", TASKS, config, task, "roberta_prelayernorm", backbone, use_cache=use_cache
    )
