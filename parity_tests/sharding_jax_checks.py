"""Sharded JAX models against unsharded ones, on 8 host CPU devices (run by test_sharding_jax.py).

The device count must be set before jax is imported, so this runs in its own interpreter: ``python
sharding_jax_checks.py OUT.json``. For every case it loads one checkpoint twice (unsharded, and with
``mesh=``/``rules=``) and records, as JSON, what the test asserts: the params' shardings, the largest
differences of logits, gradients and one AdamW step, and the save/load round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Any

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import tandem
from tandem.core.params import param_entries
from tandem.core.sharding import ShardingWarning, resolve

jax.config.update("jax_default_matmul_precision", "highest")

CONFIGS = {
    "bert": tandem.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=32, initializer_range=0.2,
    ),
    # 63 rows divide neither mesh axis: the table falls back to a split of its features, the LM bias to
    # replication; sequences of 16 tokens run block-sparse attention ((5 + 2 * 1) * 2 = 14 < 16)
    "big_bird": tandem.BigBirdConfig(
        vocab_size=63, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=32, block_size=2, num_random_blocks=1, initializer_range=0.2,
    ),
    # one layer group run by 3 layers: its parameters are shared, and sharded once
    "albert": tandem.AlbertConfig(
        vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_hidden_groups=1,
        num_attention_heads=4, intermediate_size=24, max_position_embeddings=32, initializer_range=0.2,
    ),
}  # fmt: skip
# (backend, family, mesh shape, axis names, rules, explicit axes)
CASES = [
    ("flax", "bert", (2, 4), ("data", "model"), "fsdp", False),
    ("flax", "bert", (2, 4), ("data", "model"), "tp", False),
    ("flax", "bert", (2, 4), ("data", "model"), "fsdp_tp", True),
    ("flax", "big_bird", (4, 2), ("data", "model"), "fsdp_tp", False),
    ("flax", "albert", (8,), ("data",), "fsdp", False),
    ("nnx", "bert", (2, 4), ("data", "model"), "fsdp_tp", True),
    ("nnx", "albert", (4, 2), ("data", "model"), "tp", False),
]
# Parameters whose specs the test checks by hand (flax paths below the base prefix).
SAMPLES = {
    "query": ("encoder", "layer", "0", "attention", "self", "query", "kernel"),
    "attention_output": ("encoder", "layer", "0", "attention", "output", "dense", "kernel"),
    "word_embeddings": ("embeddings", "word_embeddings", "embedding"),
}
ALBERT_LAYER = ("encoder", "albert_layer_groups", "0", "albert_layers", "0")
ALBERT_SAMPLES = {
    "query": (*ALBERT_LAYER, "attention", "query", "kernel"),
    "attention_output": (*ALBERT_LAYER, "attention", "dense", "kernel"),
    "word_embeddings": ("embeddings", "word_embeddings", "embedding"),
}


def leaves(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def max_diff(a: Any, b: Any) -> float:
    a, b = leaves(a), leaves(b)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def specs_unlike(tree: Any, params: dict[str, Any], unused: set[str] = frozenset()) -> list[str]:
    """Leaves of ``tree`` not laid out as their parameter (same devices, same blocks), with both specs.
    ``unused``: parameters the call does not read (a pooler under a masked-LM head): their gradient is a zero
    JAX makes without a use to constrain, placed where XLA likes."""
    return [
        f"{k}: {v.sharding} vs {params[k].sharding}"
        for k, v in leaves(tree).items()
        if k not in unused and not v.sharding.is_equivalent_to(params[k].sharding, v.ndim)
    ]


def batch(family: str, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    length = 16 if family == "big_bird" else 8
    ids = rng.integers(3, CONFIGS[family].vocab_size, (rows, length))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}


def train_step(backend: str, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One jitted AdamW step on the masked-LM loss: the gradients (``jax.grad`` / ``nnx.grad``), the optimizer
    state's first moments and the new params (also left in ``model``).

    Adam's first update is ``lr * g / (|g| + eps)``, whose slope at ``g = 0`` is ``lr / eps``: with optax's
    default ``eps=1e-8`` a 1e-9 difference in a near-zero gradient (sums taken in another order across
    devices) moves a parameter by 1e-3. ``eps=1e-4`` bounds that amplification to 100, so the step is compared
    at the same 1e-5 as everything else."""
    tx = optax.adamw(1e-2, eps=1e-4)
    if backend == "flax":

        @jax.jit
        def step(params: Any, state: Any, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
            grads = jax.grad(lambda p: model.apply(p, **inputs).loss)(params)
            updates, state = tx.update(grads, state, params)
            return grads, optax.apply_updates(params, updates), state

        grads, model.params, state = step(model.params, tx.init(model.params), inputs)
        return grads, state[0].mu, model.params
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model: Any, optimizer: Any, inputs: dict[str, Any]) -> Any:
        grads = nnx.grad(lambda m: m(**inputs).loss)(model)
        optimizer.update(model, grads)
        return grads

    grads = nnx.to_pure_dict(nnx_step(model, optimizer, inputs))
    return grads, nnx.to_pure_dict(optimizer.opt_state[0].mu), model.params


def reference(backend: str, folder: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The unsharded model's logits, gradients and stepped params on one device."""
    model = tandem.from_pretrained(folder, backend=backend)
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    grads, _, stepped = train_step(backend, model, inputs)
    return {"logits": logits, "grads": grads, "stepped": stepped}


def run_case(
    case: tuple[str, str, tuple[int, ...], tuple[str, ...], str, bool], folder: str, expected: dict[str, Any]
) -> dict[str, Any]:
    """One sharded model loaded from ``folder`` against the unsharded model's ``expected`` results."""
    backend, family, shape, names, rules, explicit = case
    types = None if explicit else (AxisType.Auto,) * len(shape)
    mesh = jax.make_mesh(shape, names, axis_types=types)  # jax's default: Explicit axes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShardingWarning)
        model = tandem.from_pretrained(folder, backend=backend, mesh=mesh, rules=rules)
    graph = model.graph
    specs = resolve(param_entries(graph), dict(mesh.shape), rules)
    entries = {keystr(e.flax_path): e for e in param_entries(graph)}
    params = leaves(model.params)
    wrong, shards = [], []
    for key, value in params.items():
        entry = entries[key]
        split = specs[entry.key].flax
        if not isinstance(value, jax.Array) or not value.sharding.is_equivalent_to(
            NamedSharding(mesh, PartitionSpec(*split)), value.ndim
        ):
            wrong.append(key)
        block = tuple(n // (mesh.shape[a] if a else 1) for n, a in zip(entry.flax_shape, split, strict=True))
        if {s.data.shape for s in value.addressable_shards} != {block} or len(value.addressable_shards) != 8:
            shards.append(key)
    sample_specs = {}
    for name, path in (ALBERT_SAMPLES if family == "albert" else SAMPLES).items():
        leaf = params[keystr((graph.base_prefix, *path))]
        sample_specs[name] = list(leaf.sharding.spec) + [None] * (leaf.ndim - len(leaf.sharding.spec))
    inputs = batch(family, 8)
    start = time.process_time()
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    # traced calls on Explicit axes run inside the mesh context, as JAX requires
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
        grads, moments, stepped = train_step(backend, model, inputs)
    unused = {k for k, v in leaves(expected["grads"]).items() if not np.any(np.asarray(v))}
    with tempfile.TemporaryDirectory() as saved:
        tandem.save_pretrained(model, saved)
        roundtrip = max_diff(tandem.from_pretrained(saved, backend=backend).params, model.params)
    return {
        "case": case_id(case),
        "param_types": sorted({type(v).__name__ for v in params.values()}),
        "param_specs_wrong": wrong,
        "shard_shapes_wrong": shards,
        "samples": sample_specs,
        "fallbacks": [str(w.message) for w in caught if issubclass(w.category, ShardingWarning)],
        "logits": max_diff(logits, expected["logits"]),
        "logits_batch_split": logits.sharding.spec[:1] == PartitionSpec("data")[:1],
        "grads": max_diff(grads, expected["grads"]),
        "grad_specs_wrong": specs_unlike(grads, params, unused),
        "step": max_diff(stepped, expected["stepped"]),
        "step_specs_wrong": specs_unlike(stepped, params),
        "moment_specs_wrong": specs_unlike(moments, params),
        "roundtrip": roundtrip,
        "cpu_s": round(time.process_time() - start, 1),
    }


def keystr(path: tuple[str, ...]) -> str:
    return jax.tree_util.keystr(tuple(jax.tree_util.DictKey(p) for p in path))


def built_like_unsharded() -> dict[str, Any]:
    """tandem.build(mesh=) draws the unsharded build's weights, one parameter at a time."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    config = CONFIGS["bert"]
    out = {}
    for backend in ("flax", "nnx"):
        sharded = tandem.build(config, "masked_lm", backend=backend, seed=3, mesh=mesh, rules="fsdp_tp")
        plain = tandem.build(config, "masked_lm", backend=backend, seed=3)
        out[backend] = max_diff(sharded.params, plain.params)
    return out


def case_id(case: tuple[str, str, tuple[int, ...], tuple[str, ...], str, bool]) -> str:
    backend, family, shape, _, rules, explicit = case
    return f"{backend}-{family}-{'x'.join(map(str, shape))}-{rules}-{'explicit' if explicit else 'auto'}"


def main() -> None:
    """``sharding_jax_checks.py OUT.json [CASE_ID ...]``: the cases named (default: all), then the build check."""
    wanted = sys.argv[2:] or [case_id(case) for case in CASES]
    results: dict[str, Any] = {"devices": jax.device_count(), "cases": []}
    with tempfile.TemporaryDirectory() as root:
        references: dict[tuple[str, str], dict[str, Any]] = {}
        for case in (case for case in CASES if case_id(case) in wanted):
            backend, family = case[:2]
            folder = os.path.join(root, family)
            if not os.path.exists(folder):
                tandem.save_pretrained(tandem.build(CONFIGS[family], "masked_lm", backend="flax", seed=1), folder)
            if (backend, family) not in references:
                references[backend, family] = reference(backend, folder, batch(family, 8))
            results["cases"].append(run_case(case, folder, references[backend, family]))
    results["built"] = built_like_unsharded()
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
