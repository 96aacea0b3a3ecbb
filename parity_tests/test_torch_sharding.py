"""torch scale-out: FSDP2, tensor parallelism and both, on 2 and 4 gloo processes (CPU), against the
single-device model: logits, gradients, one AdamW step, the checkpoint ``save_pretrained`` writes from
every rank, and that checkpoint loaded back sharded (``sharding_worker.py`` does the work per rank).

BERT (tied LM head), ALBERT (one layer shared by every run: one FSDP unit called three times) and BigBird
(block-sparse attention) in each; DeBERTa-v2 (relative encoder) and ModernBERT (fused q/k/v, rotary, gated
MLP) on 2 processes. Tiny configs, one spawn per process count.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import sharding_worker
import torch.multiprocessing as mp

import tandem

ATOL = 1e-5
VOCAB = 48
_SMALL = {"vocab_size": VOCAB, "hidden_size": 16, "num_attention_heads": 4, "intermediate_size": 24}
CONFIGS = {
    "bert": (tandem.BertConfig, {**_SMALL, "num_hidden_layers": 2, "max_position_embeddings": 32}, 8),
    "albert": (
        tandem.AlbertConfig,
        {**_SMALL, "num_hidden_layers": 3, "embedding_size": 8, "max_position_embeddings": 32},
        8,
    ),
    "big_bird": (
        tandem.BigBirdConfig,
        {
            **_SMALL,
            "num_hidden_layers": 2,
            "max_position_embeddings": 64,
            "attention_type": "block_sparse",
            "block_size": 4,
            "num_random_blocks": 2,
        },
        48,  # long enough for block-sparse layers: > (5 + 2 * num_random_blocks) * block_size
    ),
    "deberta-v2": (  # relative encoder: a shared relative table, a convolution beside layer 0
        tandem.DebertaV2Config,
        {
            **_SMALL,
            "num_hidden_layers": 2,
            "max_position_embeddings": 32,
            "type_vocab_size": 0,
            "position_biased_input": False,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 4,
            "max_relative_positions": 12,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
            "conv_kernel_size": 3,
        },
        8,
    ),
    "modernbert": (  # fused q/k/v, rotary positions, gated MLP, sliding-window layers
        tandem.ModernBertConfig,
        {
            **_SMALL,
            "num_hidden_layers": 2,
            "global_attn_every_n_layers": 2,
            "local_attention": 4,
            "max_position_embeddings": 32,
            "pad_token_id": 0,
        },
        8,
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path: Path, world: int, plan: list[tuple[str, Any, tuple[int, ...], tuple[str, ...]]]) -> dict:
    """Run ``plan`` (family, rules, mesh shape, mesh axes) on ``world`` processes; every rank's results."""
    cases: list[dict[str, Any]] = []
    for family, rules, shape, axes in plan:
        config_class, fields, seq = CONFIGS[family]
        checkpoint = tmp_path / family
        if not checkpoint.exists():
            model = tandem.build(config_class(**fields), "masked_lm", backend="torch", seed=1)
            tandem.save_pretrained(model, checkpoint)
        name = f"{family}-{rules if isinstance(rules, str) else 'pairs'}"
        cases.append(
            {"name": name, "checkpoint": str(checkpoint), "rules": rules, "shape": shape, "axes": axes, "seq": seq}
            | {"vocab": VOCAB}
        )
    mp.spawn(sharding_worker.main, args=(world, _free_port(), cases, str(tmp_path)), nprocs=world)
    return {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)}


def _check(results: dict) -> None:
    """Every difference within ATOL; the flags (``saved_keys``, ``state_dict_keys``, ``unused``, ``held``,
    ``tp_on_data_axis``: a wrong key set, a gradient present on one side only, elements held beyond a shard, a
    missing error) are counts, so 0."""
    for rank, cases in results.items():
        for name, diffs in cases.items():
            worst = max(diffs, key=diffs.get)
            assert diffs[worst] <= ATOL, f"rank {rank} {name}: {worst} is {diffs[worst]:.2e} ({diffs})"


def test_two_processes_fsdp_and_tp(tmp_path: Path) -> None:
    """``fsdp`` over ("data",) = 2 with each rank on half the batch; ``tp`` and user pairs over ("model",) = 2."""
    plan = [(family, "fsdp", (2,), ("data",)) for family in CONFIGS]
    plan += [(family, "tp", (2,), ("model",)) for family in CONFIGS]
    plan.append(("bert", [("mlp", "model"), ("vocab", "model")], (2,), ("model",)))  # user pairs
    _check(_spawn(tmp_path, 2, plan))


@pytest.mark.parametrize("world", [4])
def test_four_processes_fsdp_tp(tmp_path: Path, world: int) -> None:
    """``fsdp_tp`` on a 2 x 2 ("data", "model") mesh: each data group on half the batch."""
    plan = [(family, "fsdp_tp", (2, 2), ("data", "model")) for family in ("bert", "albert", "big_bird")]
    _check(_spawn(tmp_path, world, plan))


def test_mesh_must_be_a_device_mesh() -> None:
    config = tandem.BertConfig(**_SMALL, num_hidden_layers=1, max_position_embeddings=16)
    with pytest.raises(TypeError, match=r"mesh must be a torch\.distributed DeviceMesh.*got tuple"):
        tandem.build(config, backend="torch", mesh=(2,), rules="fsdp")
