"""The spec layer: configs, the layer graph, family builders, parameter rules. No framework imports."""

from .checkpoint import CheckpointError, LoadReport
from .config import FamilyConfig
from .families import FAMILIES, Family, build_graph, config_from_hf, family_of
from .families.albert import AlbertConfig
from .families.bert import BertConfig
from .families.big_bird import BigBirdConfig
from .families.squeezebert import SqueezeBertConfig
from .nodes import ModelGraph
from .params import init_params, param_entries
from .summary import summary

__all__ = [
    "FAMILIES",
    "AlbertConfig",
    "BertConfig",
    "BigBirdConfig",
    "CheckpointError",
    "Family",
    "FamilyConfig",
    "LoadReport",
    "ModelGraph",
    "SqueezeBertConfig",
    "build_graph",
    "config_from_hf",
    "family_of",
    "init_params",
    "param_entries",
    "summary",
]
