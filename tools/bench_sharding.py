"""Per-device parameter memory under the sharding presets: measured on host devices, estimated for a pod.

    python tools/bench_sharding.py                 # all three tables (markdown), as in docs/scale-out.md
    python tools/bench_sharding.py --devices 8     # host CPU devices to measure on (XLA flag, set before jax)

1. **What each preset shards**, for BERT's parameter kinds (from ``core/sharding.py``'s rules, torch layout).
2. **Measured**: bert-large (masked LM) built with ``tandem.build(..., backend="flax", mesh=..., rules="fsdp")``
   on N host devices; the bytes each device holds are summed over the params' ``addressable_shards``, and
   compared with the unsharded model (every parameter on one device).
3. **Estimated** for pod slices (TPU v5e-256: 256 chips with 16 GiB of HBM each), from the rules alone
   (:func:`tandem.core.sharding.bytes_per_device`): no device is needed, only the mesh's axis sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict

# tandem.core imports no framework: jax is imported only by measured(), after the device count is set
from tandem.core.families import build_graph
from tandem.core.families.bert import BertConfig
from tandem.core.nodes import ModelGraph
from tandem.core.params import count_params, param_entries
from tandem.core.sharding import ShardingWarning, bytes_per_device, resolve

GIB = 2**30
LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
BASE: dict[str, int] = {}
KINDS = {  # BERT's parameter kinds, by key (layer 0 stands for every layer)
    "word embeddings (vocab, embed)": "bert.embeddings.word_embeddings.weight",
    "position embeddings": "bert.embeddings.position_embeddings.weight",
    "q / k / v weight (heads, embed)": "bert.encoder.layer.0.attention.self.query.weight",
    "q / k / v bias": "bert.encoder.layer.0.attention.self.query.bias",
    "attention output weight (embed, heads)": "bert.encoder.layer.0.attention.output.dense.weight",
    "intermediate weight (mlp, embed)": "bert.encoder.layer.0.intermediate.dense.weight",
    "output weight (embed, mlp)": "bert.encoder.layer.0.output.dense.weight",
    "LayerNorm weight / bias": "bert.encoder.layer.0.output.LayerNorm.weight",
    "LM bias (vocab)": "cls.predictions.bias",
}
PODS = [  # (name, mesh axis sizes, rules)
    ("v5e-256", {"data": 256}, "fsdp"),
    ("v5e-256", {"data": 32, "model": 8}, "fsdp_tp"),
    ("v5e-256", {"data": 64, "model": 4}, "fsdp_tp"),
    ("v5e-8", {"model": 8}, "tp"),
]


def _graph(size: dict[str, int]) -> ModelGraph:
    return build_graph(BertConfig(**size), "masked_lm")


def preset_table() -> str:
    """What each preset gives BERT's parameter kinds on a (data 2, model 4) mesh (torch layout)."""
    entries = param_entries(_graph(BASE))
    rows = ["| parameter (torch layout) | fsdp | tp | fsdp_tp |", "|---|---|---|---|"]
    specs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardingWarning)
        for rules in ("fsdp", "tp", "fsdp_tp"):
            specs[rules] = resolve(entries, {"data": 2, "model": 4}, rules)
    for name, key in KINDS.items():
        cells = [str(tuple(specs[rules][key].torch)).replace("'", "") for rules in ("fsdp", "tp", "fsdp_tp")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def measured(devices: int) -> str:
    """bert-large's parameter bytes per device, unsharded vs fsdp on ``devices`` host devices."""
    import jax

    import tandem

    config = tandem.BertConfig(**LARGE)
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = ["| bert-large (masked LM), float32 | largest device | smallest device | total |", "|---|---|---|---|"]
    for label, model in (
        ("unsharded", tandem.build(config, "masked_lm", backend="flax")),
        (f"fsdp on {devices} host devices", tandem.build(config, "masked_lm", backend="flax", mesh=mesh, rules="fsdp")),
    ):
        held: dict[object, int] = defaultdict(int)
        for leaf in jax.tree.leaves(model.params):
            for shard in leaf.addressable_shards:
                held[shard.device] += shard.data.nbytes
        rows.append(
            f"| {label} | {max(held.values()) / GIB:.3f} GiB | {min(held.values()) / GIB:.3f} GiB "
            f"| {sum(held.values()) / GIB:.3f} GiB |"
        )
        del model
    return "\n".join(rows)


def estimated() -> str:
    """Parameter and AdamW-state bytes per device for BERT sizes on pod meshes, from the rules alone."""
    rows = [
        "| model | slice | mesh | rules | params / device | + AdamW state (x3) |",
        "|---|---|---|---|---|---|",
    ]
    for label, size in (("bert-base", BASE), ("bert-large", LARGE)):
        graph = _graph(size)
        entries = param_entries(graph)
        total = count_params(graph) * 4
        rows.append(f"| {label} | 1 device | - | - | {total / GIB:.3f} GiB | {3 * total / GIB:.3f} GiB |")
        for pod, axes, rules in PODS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShardingWarning)
                each = bytes_per_device(entries, resolve(entries, axes, rules), axes)
            mesh = " x ".join(f"{k} {v}" for k, v in axes.items())
            rows.append(f"| {label} | {pod} | {mesh} | {rules} | {each / 2**20:.2f} MiB | {3 * each / 2**20:.2f} MiB |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="host CPU devices to measure on (default 8)")
    args = parser.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("run as a script: the host device count must be set before jax is imported")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    print("What each preset shards (BERT, mesh data 2 x model 4):\n")
    print(preset_table())
    print(f"\nMeasured on {args.devices} host devices:\n")
    print(measured(args.devices))
    print("\nEstimated from the rules (no devices):\n")
    print(estimated())


if __name__ == "__main__":
    main()
