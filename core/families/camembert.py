"""CamemBERT: RoBERTa's graph under HF's ``Camembert*`` class names (base prefix ``roberta``, as HF's).

HF has no Flax classes for CamemBERT; tandem's flax backend writes the tree HF Flax RoBERTa would have.
"""

from __future__ import annotations

from typing import ClassVar

from ..nodes import ModelGraph
from .roberta import RobertaConfig, roberta_backbone, roberta_tasks
from .tasks import Task, build_task_graph


class CamembertConfig(RobertaConfig):
    """HF ``CamembertConfig``: RoBERTa's fields; HF's defaults (``vocab_size`` 30522, ``pad_token_id`` 1)."""

    model_type: ClassVar[str] = "camembert"

    vocab_size: int = 30522


TASKS: dict[str, Task] = roberta_tasks("Camembert")


def build_camembert(config: CamembertConfig, task: str) -> ModelGraph:
    """Compile a :class:`CamembertConfig` and a task name into the layer graph of HF's matching class."""
    use_cache = config.use_cache and config.is_decoder
    return build_task_graph("camembert", TASKS, config, task, "roberta", roberta_backbone(), use_cache=use_cache)
