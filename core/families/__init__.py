"""The family registry: model_type -> config class, builder, HF architecture names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import FamilyConfig, parse_hf_config
from ..nodes import ModelGraph
from ..sentence import SENTENCE_TASK, SentenceSpec, sentence_embedding_graph
from . import (
    albert,
    bert,
    big_bird,
    camembert,
    deberta,
    deberta_v2,
    distilbert,
    electra,
    modernbert,
    roberta,
    roberta_prelayernorm,
    squeezebert,
    xlm_roberta,
)
from .tasks import Task


@dataclass(frozen=True)
class Family:
    """What tandem knows about a family: its config class, its builder and its task table."""

    name: str
    config_class: type[FamilyConfig]
    build: Callable[[Any, str], ModelGraph]
    task_table: dict[str, Task]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.task_table)

    @property
    def architectures(self) -> dict[str, str]:
        """task -> HF PyTorch class name."""
        return {task: spec.hf_class for task, spec in self.task_table.items()}

    def task_of(self, architecture: str) -> str | None:
        """The task of an HF class name (PyTorch or Flax), or None when unknown."""
        for task, spec in self.task_table.items():
            if architecture in (spec.hf_class, spec.hf_flax_class):
                return task
        return None


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("bert", bert.BertConfig, bert.build_bert, bert.TASKS),
        Family("albert", albert.AlbertConfig, albert.build_albert, albert.TASKS),
        Family("big_bird", big_bird.BigBirdConfig, big_bird.build_big_bird, big_bird.TASKS),
        Family("squeezebert", squeezebert.SqueezeBertConfig, squeezebert.build_squeezebert, squeezebert.TASKS),
        Family("deberta", deberta.DebertaConfig, deberta.build_deberta, deberta.TASKS),
        Family("deberta-v2", deberta_v2.DebertaV2Config, deberta_v2.build_deberta_v2, deberta_v2.TASKS),
        Family("electra", electra.ElectraConfig, electra.build_electra, electra.TASKS),
        Family("distilbert", distilbert.DistilBertConfig, distilbert.build_distilbert, distilbert.TASKS),
        Family("roberta", roberta.RobertaConfig, roberta.build_roberta, roberta.TASKS),
        Family("xlm-roberta", xlm_roberta.XLMRobertaConfig, xlm_roberta.build_xlm_roberta, xlm_roberta.TASKS),
        Family("camembert", camembert.CamembertConfig, camembert.build_camembert, camembert.TASKS),
        Family(
            "roberta-prelayernorm",
            roberta_prelayernorm.RobertaPreLayerNormConfig,
            roberta_prelayernorm.build_roberta_prelayernorm,
            roberta_prelayernorm.TASKS,
        ),
        Family("modernbert", modernbert.ModernBertConfig, modernbert.build_modernbert, modernbert.TASKS),
    )
}


def family_of(config: FamilyConfig) -> Family:
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise TypeError(f"{type(config).__name__} is not a tandem family config ({', '.join(FAMILIES)})")


def config_from_hf(path_or_dict: str | Path | dict[str, Any]) -> FamilyConfig:
    """Read an HF ``config.json`` (a path, a checkpoint directory or a dict) into a family config."""
    return parse_hf_config(path_or_dict, {name: family.config_class for name, family in FAMILIES.items()})


def build_graph(config: FamilyConfig, task: str = "base", sentence: SentenceSpec | None = None) -> ModelGraph:
    """The layer graph of ``config`` for ``task``. ``task="sentence_embedding"`` (every family) is the base
    model with the pooling head ``sentence`` describes (default: mean pooling, not normalised)."""
    family = family_of(config)
    if task == SENTENCE_TASK:
        return sentence_embedding_graph(family.build(config, "base"), sentence or SentenceSpec(), config.hidden_size)
    if sentence is not None:
        raise ValueError(f"pooling options apply to task={SENTENCE_TASK!r}, not to task={task!r}")
    return family.build(config, task)
