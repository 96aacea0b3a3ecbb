"""One process of the torch scale-out tests (``test_torch_sharding.py``), started by
``torch.multiprocessing.spawn`` on gloo over 127.0.0.1.

For every case each rank loads the same checkpoint twice, unsharded (the single-device reference, run on
the whole batch) and sharded on the case's mesh (run on this rank's rows of the batch: split over
``"data"`` when the mesh has it, else the whole batch), and records the largest difference of the logits,
of every gradient and of every parameter after one ``torch.optim.AdamW`` step, then of the checkpoint
``save_pretrained`` writes from the sharded model (every rank calls it) and of the logits of that checkpoint
loaded back sharded (and saved as msgpack, and as several safetensors files, loaded back unsharded); and that
``tandem.build`` with the mesh gives the unsharded build's weights, and that no rank holds more of a
parameter than its shard. The test asserts on the JSON each rank
writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import tandem
from tandem.core.checkpoint import read_weights
from tandem.core.params import param_entries
from tandem.core.sharding import resolve, shard_shape

BATCH = 4


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.full_tensor() if isinstance(x, DTensor) else x


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((_full(a).detach() - b.detach()).abs().max())


def _held_beyond_shards(model: Any, mesh: Any, rules: Any) -> float:
    """How many parameter elements this rank holds beyond its shards: each parameter split as the rules
    say over the mesh axes it names (FSDP: dim 0 over "data", rounded up), so 0 unless something was left
    whole."""
    names = mesh.mesh_dim_names
    sizes = dict(zip(names, mesh.shape, strict=True))
    specs = resolve(param_entries(model.graph), sizes, rules)
    extra = 0
    for entry in param_entries(model.graph):
        local = list(shard_shape(entry.spec.shape, specs[entry.key].torch, {**sizes, "data": 1}))
        if rules in ("fsdp", "fsdp_tp"):
            local[0] = -(-local[0] // sizes["data"])
        param = model.get_parameter(entry.key)
        extra += max(0, (param.to_local() if isinstance(param, DTensor) else param).numel() - math.prod(local))
    return float(extra)


def _step(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Logits, then gradients of the loss, then one AdamW step; returns the logits and the gradients. The
    optimiser is made after the forward, when an FSDP model must already show its sharded parameters again.

    Adam's first update is ``lr * g / (|g| + eps)``, whose slope at ``g = 0`` is ``lr / eps``: with the default
    ``eps=1e-8``, the last-bit differences of a near-zero gradient (sums taken in another order across ranks)
    move a parameter by up to 1e-5 on some CPUs. ``eps=1e-4`` bounds that amplification to 100 (as the JAX
    sharding checks do), so the step is compared at the suite's tolerance."""
    out = model(**batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)
    out.loss.backward()
    grads = {e.key: model.get_parameter(e.key).grad for e in param_entries(model.graph)}
    grads = {k: None if g is None else _full(g) for k, g in grads.items()}  # None: unused (BigBird's pooler)
    optimizer.step()
    return out.logits.detach(), grads


def check_case(case: dict[str, Any], work: Path, rank: int) -> dict[str, float]:
    names = tuple(case["axes"])
    mesh = init_device_mesh("cpu", tuple(case["shape"]), mesh_dim_names=names)
    generator = torch.Generator().manual_seed(0)
    seq, vocab = case["seq"], case["vocab"]
    batch = {
        "input_ids": torch.randint(0, vocab, (BATCH, seq), generator=generator),
        "labels": torch.randint(0, vocab, (BATCH, seq), generator=generator),
    }
    rows = slice(None)
    if "data" in names:
        size, index = mesh["data"].size(), mesh["data"].get_local_rank()
        rows = slice(index * BATCH // size, (index + 1) * BATCH // size)
    ckpt = case["checkpoint"]
    reference = tandem.from_pretrained(ckpt, backend="torch")
    model = tandem.from_pretrained(ckpt, backend="torch", mesh=mesh, rules=case["rules"])
    out = {
        "held": _held_beyond_shards(model, mesh, case["rules"]),
        "state_dict_keys": float(list(model.state_dict()) != list(reference.state_dict())),  # HF's, in order
    }
    ref_logits, ref_grads = _step(reference, batch)
    logits, grads = _step(model, {k: v[rows] for k, v in batch.items()})
    out |= {
        "logits": _diff(logits, ref_logits[rows]),
        "grads": max(_diff(grads[k], ref_grads[k]) for k in ref_grads if ref_grads[k] is not None),
        "unused": float(sum((grads[k] is None) != (ref_grads[k] is None) for k in ref_grads)),
        "step": max(_diff(model.get_parameter(k), reference.get_parameter(k)) for k in ref_grads),
    }
    saved = work / f"{case['name']}-saved"
    tandem.save_pretrained(model, saved)
    written = read_weights(saved)
    out["saved"] = max(_diff(torch.from_numpy(written[k].copy()), reference.get_parameter(k)) for k in ref_grads)
    out["saved_keys"] = float(set(written) != set(ref_grads))
    again = tandem.from_pretrained(saved, backend="torch", mesh=mesh, rules=case["rules"])
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"]).logits[rows]
        out["reloaded"] = _diff(again(input_ids=batch["input_ids"][rows]).logits, expected)
    for format, size in (("msgpack", None), ("safetensors", "4KB")):  # flax layout; several files + index
        other = work / f"{case['name']}-{format}"
        tandem.save_pretrained(model, other, format=format, max_shard_size=size)
        loaded = tandem.from_pretrained(other, backend="torch")
        out[f"saved_{format}"] = max(_diff(loaded.get_parameter(k), reference.get_parameter(k)) for k in ref_grads)
    fresh = tandem.build(reference.config, "masked_lm", backend="torch", seed=3)
    built = tandem.build(reference.config, "masked_lm", backend="torch", seed=3, mesh=mesh, rules=case["rules"])
    out["build"] = max(_diff(built.get_parameter(k), fresh.get_parameter(k)) for k in ref_grads)
    return out


def _tp_on_data_axis(checkpoint: Path) -> float:
    """0 when ``rules="tp"`` on a mesh with a "data" axis raises the ValueError that names fsdp_tp."""
    mesh = init_device_mesh("cpu", (1, dist.get_world_size()), mesh_dim_names=("data", "model"))
    try:
        tandem.from_pretrained(checkpoint, backend="torch", mesh=mesh, rules="tp")
    except ValueError as err:
        return float("use 'fsdp_tp'" not in str(err))
    return 1.0


def main(rank: int, world: int, port: int, cases: list[dict[str, Any]], work: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {case["name"]: check_case(case, Path(work), rank) for case in cases}
        results["errors"] = {"tp_on_data_axis": _tp_on_data_axis(Path(cases[0]["checkpoint"]))}
        (Path(work) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()
