"""The spec layer: configs, the layer graph, family builders, parameter rules. No framework imports."""

from .checkpoint import CheckpointError, LoadReport
from .config import FamilyConfig
from .families import FAMILIES, Family, build_graph, config_from_hf, family_of
from .families.albert import AlbertConfig
from .families.bert import BertConfig
from .families.big_bird import BigBirdConfig
from .families.camembert import CamembertConfig
from .families.deberta import DebertaConfig
from .families.deberta_v2 import DebertaV2Config
from .families.distilbert import DistilBertConfig
from .families.electra import ElectraConfig
from .families.modernbert import ModernBertConfig
from .families.roberta import RobertaConfig
from .families.roberta_prelayernorm import RobertaPreLayerNormConfig
from .families.squeezebert import SqueezeBertConfig
from .families.xlm_roberta import XLMRobertaConfig
from .nodes import ModelGraph
from .params import init_params, param_entries
from .summary import summary

__all__ = [
    "FAMILIES",
    "AlbertConfig",
    "BertConfig",
    "BigBirdConfig",
    "CamembertConfig",
    "DebertaConfig",
    "DebertaV2Config",
    "DistilBertConfig",
    "ElectraConfig",
    "CheckpointError",
    "Family",
    "FamilyConfig",
    "LoadReport",
    "ModelGraph",
    "ModernBertConfig",
    "RobertaConfig",
    "RobertaPreLayerNormConfig",
    "SqueezeBertConfig",
    "XLMRobertaConfig",
    "build_graph",
    "config_from_hf",
    "family_of",
    "init_params",
    "param_entries",
    "summary",
]
