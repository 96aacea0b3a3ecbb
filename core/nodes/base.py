"""Node base types: activations, init schemes, parameter specs, the torch <-> flax rule, ``Node``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

# Activations implemented identically in both backends (the union of HF's torch and flax ACT2FN tables
# that BERT-family checkpoints use). Each name is one explicit formula; see docs/architecture.md.
ACTIVATIONS = (
    "gelu",  # exact erf GELU
    "gelu_new",  # tanh approximation, written out
    "gelu_pytorch_tanh",  # tanh approximation: torch runs its fused kernel, as HF's GELUTanh does; flax the formula
    "gelu_fast",  # 0.5x(1+tanh(0.7978845608x(1+0.044715x^2)))
    "quick_gelu",  # x*sigmoid(1.702x)
    "relu",
    "relu6",
    "silu",
    "swish",
    "mish",
    "tanh",
    "sigmoid",
    "linear",
)
Activation = Literal[
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "relu6",
    "silu",
    "swish",
    "mish",
    "tanh",
    "sigmoid",
    "linear",
]


def join(*parts: str) -> str:
    """Join path segments with '.', skipping empty ones."""
    return ".".join(p for p in parts if p)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------- init
class NormalInit(_Frozen):
    kind: Literal["normal"] = "normal"
    std: float


class ZerosInit(_Frozen):
    kind: Literal["zeros"] = "zeros"


class OnesInit(_Frozen):
    kind: Literal["ones"] = "ones"


class SinusoidalInit(_Frozen):
    """A fixed (positions, features) table: ``sin`` on even features, ``cos`` on odd ones, of
    ``pos / 10000 ** (2 * (j // 2) / features)`` computed in float64 (HF's ``create_sinusoidal_embeddings``)."""

    kind: Literal["sinusoidal"] = "sinusoidal"


Init = Annotated[NormalInit | ZerosInit | OnesInit | SinusoidalInit, Field(discriminator="kind")]


class ParamSpec(_Frozen):
    """One parameter: its name inside the node (HF PyTorch's), shape, logical axes and init."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: Init
    zero_row: int | None = None  # an embedding padding row that HF PyTorch initialises to zero
    legacy_names: tuple[str, ...] = ()  # older names checkpoints may use for it (TF-era ``gamma``/``beta``)


class FlaxRule(_Frozen):
    """How one torch-layout parameter appears in flax: its name there and the axis permutation."""

    name: str
    permutation: tuple[int, ...] | None = None


# -------------------------------------------------------------------------------------- node base
class Node(_Frozen):
    path: str = ""

    # The single declared torch <-> flax rule of a node kind: torch name -> flax name + permutation.
    # Parameters not listed keep their name and layout.
    flax_rules: ClassVar[dict[str, FlaxRule]] = {}

    def param_specs(self) -> list[ParamSpec]:
        """Parameters this node owns itself (not those of its children)."""
        return []

    def extra_inputs(self) -> tuple[str, ...]:
        """Call keywords this node reads besides the common inputs and the labels (a head's own inputs)."""
        return ()

    def outputs(self) -> dict[str, tuple[bool, int]]:
        """A head's outputs: name -> (whether it has one row per token, the size of its last axis before any
        split). The call plan reads them to check labels; every head kind defines it."""
        return {}

    def buffers(self) -> tuple[str, ...]:
        """Names of non-parameter tensors HF PyTorch checkpoints may hold under this node (ignored on load)."""
        return ()

    def children(self) -> list[Node]:
        """Child nodes that own parameters, in declaration order (shared nodes appear once)."""
        out: list[Node] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Node):
                out.append(value)
            elif isinstance(value, (list, tuple)):
                out.extend(v for v in value if isinstance(v, Node))
        return out
