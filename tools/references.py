"""Each family's HF reference, in one table: what HF calls it and the tiny config it is checked at.

:data:`REFERENCES` holds, per family, what :data:`tandem.core.FAMILIES` does not know: the tiny config
(HF config kwargs) that the parity suite and ``tandem parity`` check every task at, the config a task needs
on top of it, whether HF has Flax classes for it, and the inputs its heads read. The HF class names come
from the registry itself: the config class is named as tandem's (``BertConfig``), the PyTorch class per
task is ``Family.architectures`` and the Flax one the task table's ``hf_flax_class``.

``transformers`` is the reference, a test dependency: it is imported when a reference model is made, never
when this module is.

Example:
    >>> reference = REFERENCES["albert"]
    >>> reference.torch_class("masked_lm"), reference.flax_class("masked_lm")
    ('AlbertForMaskedLM', 'FlaxAlbertForMaskedLM')
    >>> reference.config("base")["num_hidden_groups"]
    2
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

from ..core import FAMILIES, Family

# What a task needs whatever the family: a causal LM is a decoder (HF warns otherwise, and the left-to-right
# model is the one users build).
TASK_CONFIG: dict[str, dict[str, Any]] = {"causal_lm": {"is_decoder": True}}


@dataclass(frozen=True)
class Reference:
    """One family as HF implements it, and the tiny config tandem is checked against it at.

    Attributes:
        name: the family (a key of :data:`tandem.core.FAMILIES`).
        tiny: HF config kwargs of the size every task is checked at (HF defaults for the rest).
        task_config: per task, config on top of ``tiny`` and :data:`TASK_CONFIG`.
        has_flax: whether HF has Flax classes for the family.
        mask_patterns: the attention-mask rows its batches cycle through (see ``harness.make_batch``).
        pair_label: the label of the pretraining head's sentence-pair classifier; None: the pretraining head
            is a replaced-token detector, labelled 0/1 per token.
        question_separator: question answering finds the question's end at the first ``sep_token_id``.
        token_types: whether HF's classes take ``token_type_ids`` (batches leave them out otherwise).
    """

    name: str
    tiny: Mapping[str, Any]
    task_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    has_flax: bool = True
    mask_patterns: tuple[int, ...] = (0, 1, 2, 3, 4)
    pair_label: str | None = "next_sentence_label"
    question_separator: bool = False
    token_types: bool = True

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.family.tasks

    @property
    def config_class(self) -> str:
        """HF's config class name (tandem names its config classes as HF does)."""
        return self.family.config_class.__name__

    def torch_class(self, task: str) -> str:
        return self.family.architectures[task]

    def flax_class(self, task: str) -> str | None:
        """HF Flax's class name for ``task``, or None where HF has no Flax class for the family."""
        return self.family.task_table[task].hf_flax_class if self.has_flax else None

    def config(self, task: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """HF config kwargs for ``task``: the tiny config, what the task needs, then ``overrides``."""
        return {**self.tiny, **TASK_CONFIG.get(task, {}), **self.task_config.get(task, {}), **(overrides or {})}


# Every size is small enough for a CPU test and large enough to be a real case: several layers, several heads
# whose head_dim is not a power of four (HF Flax scales Q before the Q.K product and HF PyTorch after it,
# which agree bitwise only when sqrt(head_dim) is a power of two), widths that differ from each other, and
# initializer_range 0.2 (HF: 0.02), so that attention is far from uniform and logits are O(1).
ROBERTA_TINY: dict[str, Any] = {
    "vocab_size": 93,
    "hidden_size": 36,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 53,
    "hidden_act": "gelu",
    "max_position_embeddings": 40,
    "type_vocab_size": 1,  # as released checkpoints: no token types
    "pad_token_id": 1,  # positions count from 2, skipping pad tokens (padded rows hold pad ids)
    "initializer_range": 0.2,
    "layer_norm_eps": 1e-5,
}

REFERENCES: dict[str, Reference] = {
    "roberta": Reference("roberta", ROBERTA_TINY),
    "xlm-roberta": Reference("xlm-roberta", {**ROBERTA_TINY, "vocab_size": 89, "intermediate_size": 47}),
    # HF's default type_vocab_size 2: token types on top of the skip-padding positions
    "camembert": Reference("camembert", {**ROBERTA_TINY, "type_vocab_size": 2}, has_flax=False),
    "roberta-prelayernorm": Reference("roberta-prelayernorm", {**ROBERTA_TINY, "hidden_act": "gelu_new"}),
    "bert": Reference(
        "bert",
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "hidden_act": "gelu",
            "max_position_embeddings": 40,
            "type_vocab_size": 2,
            "initializer_range": 0.2,
            "layer_norm_eps": 1e-12,
        },
    ),
    "albert": Reference(
        "albert",
        {
            "vocab_size": 91,
            "embedding_size": 20,  # not hidden_size: the embedding projection is a real one
            "hidden_size": 36,
            "num_attention_heads": 3,
            "intermediate_size": 47,
            "num_hidden_layers": 4,  # two groups of two inner layers, each group run twice
            "num_hidden_groups": 2,
            "inner_group_num": 2,
            "max_position_embeddings": 40,
            "initializer_range": 0.2,
        },
        pair_label="sentence_order_label",
    ),
    "squeezebert": Reference(
        "squeezebert",
        {
            "vocab_size": 91,
            "embedding_size": 32,  # SqueezeBERT requires embedding_size == hidden_size
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "q_groups": 4,
            "k_groups": 2,
            "v_groups": 1,
            "post_attention_groups": 2,
            "intermediate_groups": 4,
            "output_groups": 8,
            "layer_norm_eps": 1e-5,  # the encoder norms must still use 1e-12 (HF's quirk)
            "max_position_embeddings": 40,
            "initializer_range": 0.2,
        },
        has_flax=False,
    ),
    "big_bird": Reference(
        "big_bird",
        {
            "vocab_size": 91,
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "block_size": 4,  # inputs longer than (5 + 2 * 1) * 4 = 28 tokens run block-sparse attention
            "num_random_blocks": 1,
            "max_position_embeddings": 64,
            "sep_token_id": 5,
            "initializer_range": 0.2,
        },
        # tandem runs a BigBird decoder with full causal attention, HF PyTorch block-sparse attention without
        # a causal mask (docs/families/big_bird.md): the decoder is checked where both agree.
        task_config={"causal_lm": {"attention_type": "original_full"}},
        # A fully masked row's block-sparse scores sit at -10000, where float32 steps are ~1e-3: its (unused,
        # zero-context) attention map is rounding noise in any implementation, so batches have none.
        mask_patterns=(0, 1, 2, 4),
        question_separator=True,
    ),
    "electra": Reference(
        "electra",
        {
            "vocab_size": 89,
            "embedding_size": 20,  # not hidden_size: embeddings_project is a real projection
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 47,
            "hidden_act": "gelu",  # the generator's activation in HF Flax (HF PyTorch: gelu whatever this says)
            "max_position_embeddings": 40,
            "type_vocab_size": 3,
            "initializer_range": 0.2,
        },
        pair_label=None,  # the discriminator: one 0/1 label per token, no sentence-pair label
    ),
    "distilbert": Reference(
        "distilbert",
        {
            "vocab_size": 93,
            "dim": 36,
            "n_layers": 2,
            "n_heads": 3,
            "hidden_dim": 53,
            "activation": "gelu",
            "max_position_embeddings": 40,
            "initializer_range": 0.2,
        },
        token_types=False,
    ),
    "modernbert": Reference(
        "modernbert",
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 3,  # a global layer 0, sliding-window layers 1 and 2
            "num_attention_heads": 3,
            "intermediate_size": 29,
            "global_attn_every_n_layers": 3,
            "local_attention": 4,  # a window of 2 positions each side: batches of 9 reach past it
            "global_rope_theta": 1000.0,
            "local_rope_theta": 50.0,
            "attention_bias": True,  # every bias on (HF's default is none), so that each one is checked
            "mlp_bias": True,
            "norm_bias": True,
            "classifier_bias": True,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
            "initializer_range": 0.2,
        },
        has_flax=False,
        token_types=False,
    ),
    "deberta": Reference(
        "deberta",
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 40,
            "type_vocab_size": 0,  # as microsoft/deberta-base: no token types, no absolute positions
            "position_biased_input": False,
            "relative_attention": True,
            "pos_att_type": ["c2p", "p2c"],
            "max_relative_positions": 6,  # batches of 9 reach past the clamp
            "talking_head": True,  # off in the published checkpoints; on here so that every task checks it
            "initializer_range": 0.2,
        },
        has_flax=False,
    ),
    "deberta-v2": Reference(
        "deberta-v2",
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 40,
            "type_vocab_size": 0,  # as DeBERTa-v3: no token types, no absolute positions
            "position_biased_input": False,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 4,  # log buckets from distance 2 on: batches of 9 reach them
            "max_relative_positions": 12,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
            "conv_kernel_size": 3,  # as DeBERTa-v2-xlarge: the convolution beside the first layer
            "initializer_range": 0.2,
        },
        has_flax=False,
    ),
}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """HF's notices about its own classes (deprecations, weights it initialised) are not ours to show."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def hf_config(family: str, task: str = "base", overrides: Mapping[str, Any] | None = None) -> Any:
    """HF's config object for ``task`` (see :meth:`Reference.config`), with eager attention (the reference)."""
    import transformers

    reference = REFERENCES[family]
    kwargs = reference.config(task, overrides)
    return getattr(transformers, reference.config_class)(**kwargs, attn_implementation="eager")


def make_hf_model(
    family: str, task: str, overrides: Mapping[str, Any] | None = None, seed: int = 0, perturb: float = 0.05
) -> torch.nn.Module:
    """HF PyTorch's model for ``task`` with HF's own init under ``torch.manual_seed(seed)``, in eval mode.

    HF's init sets every bias to 0 and every LayerNorm to (1, 0): a bias that is never added, or two that are
    swapped, would then go unnoticed. So each parameter then gets N(0, perturb^2) noise added (tied
    parameters are one object and are perturbed once).
    """
    import transformers

    config = hf_config(family, task, overrides)
    torch.manual_seed(seed)
    with quiet():
        model = getattr(transformers, REFERENCES[family].torch_class(task))(config)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
    return model.eval()


def hf_torch_model(directory: str | Path, family: str, task: str) -> torch.nn.Module:
    """HF PyTorch's class for ``task`` loaded from an HF checkpoint directory, eager attention, eval mode."""
    import transformers

    cls = getattr(transformers, REFERENCES[family].torch_class(task))
    with quiet():
        return cls.from_pretrained(str(directory), attn_implementation="eager").eval()


class HFFlax:
    """HF Flax's class for a task on an HF PyTorch checkpoint's weights; each call signature jitted once.

    Called as ``model(inputs, output_hidden_states=..., output_attentions=...)`` with a dict of arrays; returns
    HF's output fields as a dict. Jitted, the HF Flax calls of the parity suite took 28 s on a 2-core machine,
    op by op (HF's own ``__call__``) 35 s: BigBird's block-sparse attention is many small ops.
    """

    def __init__(self, model: Any, params: Any) -> None:
        self.model = model
        self.params = params
        self._calls: dict[tuple[Any, ...], Any] = {}

    def __call__(
        self, inputs: Mapping[str, np.ndarray], output_hidden_states: bool = False, output_attentions: bool = False
    ) -> dict[str, Any]:
        key = (tuple(sorted(inputs)), output_hidden_states, output_attentions)
        if key not in self._calls:

            def call(params: Any, arrays: dict[str, jax.Array]) -> dict[str, Any]:
                out = self.model(
                    **arrays,
                    params=params,
                    output_hidden_states=output_hidden_states,
                    output_attentions=output_attentions,
                )
                return dict(out)  # HF's ModelOutput is not a pytree that jit can return

            self._calls[key] = jax.jit(call)
        return self._calls[key](self.params, dict(inputs))


def hf_flax_model(directory: str | Path, family: str, task: str) -> HFFlax:
    """HF Flax's class for ``task`` on the ``model.safetensors`` of an HF PyTorch checkpoint directory.

    The params are HF's own PyTorch -> Flax conversion of the file (what ``from_pretrained(from_pt=True)``
    runs), without ``from_pretrained``'s random init of the whole model first: that init runs op by op and
    took 17 s per tiny model on a 2-core machine, the conversion 0.4 s. Every param the class has must
    come from the checkpoint.
    """
    import transformers
    from flax.traverse_util import flatten_dict, unflatten_dict
    from transformers.modeling_flax_pytorch_utils import load_pytorch_checkpoint_in_flax_state_dict

    name = REFERENCES[family].flax_class(task)
    if name is None:
        raise ValueError(f"HF has no Flax class for {family}")
    with quiet():
        config = getattr(transformers, REFERENCES[family].config_class).from_pretrained(str(directory))
        model = getattr(transformers, name)(config, _do_init=False)
    # What the converter reads of a model: the shape tree stands in for its (never made) random params.
    stand_in = types.SimpleNamespace(
        params=model.params_shape_tree, base_model_prefix=model.base_model_prefix, config=model.config
    )
    path = str(Path(directory) / "model.safetensors")
    state = flatten_dict(load_pytorch_checkpoint_in_flax_state_dict(stand_in, path, is_sharded=False))
    missing = model.required_params - set(state)
    if missing:
        raise ValueError(f"{path} lacks params of {name}: {sorted('/'.join(k) for k in missing)}")
    # As from_pretrained does, the params the class does not have (a tied decoder) are dropped.
    return HFFlax(model, unflatten_dict({key: value for key, value in state.items() if key in model.required_params}))
