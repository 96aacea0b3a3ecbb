"""XLM-RoBERTa: RoBERTa's graph under HF's ``XLMRoberta*`` class names (base prefix ``roberta``, as HF's)."""

from __future__ import annotations

from typing import ClassVar

from ..nodes import ModelGraph
from .roberta import RobertaConfig, roberta_backbone, roberta_tasks
from .tasks import Task, build_task_graph


class XLMRobertaConfig(RobertaConfig):
    """HF ``XLMRobertaConfig``: RoBERTa's fields; HF's defaults (``vocab_size`` 30522, ``pad_token_id`` 1)."""

    model_type: ClassVar[str] = "xlm-roberta"

    vocab_size: int = 30522


TASKS: dict[str, Task] = roberta_tasks("XLMRoberta")


def build_xlm_roberta(config: XLMRobertaConfig, task: str) -> ModelGraph:
    """Compile a :class:`XLMRobertaConfig` and a task name into the layer graph of HF's matching class."""
    use_cache = config.use_cache and config.is_decoder
    return build_task_graph("xlm-roberta", TASKS, config, task, "roberta", roberta_backbone(), use_cache=use_cache)
