"""The family registry: model_type -> config class, builder, HF architecture names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import FamilyConfig, read_config_dict
from ..nodes import ModelGraph
from . import albert, bert, big_bird, squeezebert


@dataclass(frozen=True)
class Family:
    """What tandem knows about a family: everything else comes from its graph."""

    name: str
    config_class: type[FamilyConfig]
    build: Callable[[Any, str], ModelGraph]
    architectures: dict[str, str]  # task -> HF PyTorch class name
    base_prefix: str  # the prefix head models nest the base under
    other_architectures: dict[str, str] = field(default_factory=dict)  # HF class name -> task, beyond "Flax" + name

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.architectures)

    def task_of(self, architecture: str) -> str | None:
        """The task of an HF class name (PyTorch or Flax), or None when unknown."""
        if architecture in self.other_architectures:
            return self.other_architectures[architecture]
        name = architecture.removeprefix("Flax")
        for task, arch in self.architectures.items():
            if arch == name:
                return task
        return None


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", bert.BertConfig, bert.build_bert, bert.ARCHITECTURES, "bert", bert.OTHER_ARCHITECTURES),
    "albert": Family("albert", albert.AlbertConfig, albert.build_albert, albert.ARCHITECTURES, "albert"),
    "big_bird": Family("big_bird", big_bird.BigBirdConfig, big_bird.build_big_bird, big_bird.ARCHITECTURES, "bert"),
    "squeezebert": Family(
        "squeezebert",
        squeezebert.SqueezeBertConfig,
        squeezebert.build_squeezebert,
        squeezebert.ARCHITECTURES,
        "transformer",
    ),
}


def family_of(config: FamilyConfig) -> Family:
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise TypeError(f"{type(config).__name__} is not a tandem family config ({', '.join(FAMILIES)})")


def config_from_hf(path_or_dict: str | Path | dict[str, Any]) -> FamilyConfig:
    """Read an HF ``config.json`` (a path, a checkpoint directory or a dict) into a family config."""
    data = read_config_dict(path_or_dict)
    model_type = data.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"config model_type={model_type!r} is not supported; tandem knows {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type].config_class.from_hf_dict(data)


def build_graph(config: FamilyConfig, task: str = "base") -> ModelGraph:
    """The layer graph of ``config`` for ``task``."""
    return family_of(config).build(config, task)
