"""bert-base forward on CPU: the NNX backend against the linen backend, on the same weights.

What is timed: one forward of the base model (``last_hidden_state`` and ``pooler_output``) on a padded fp32
batch, five ways: the linen backend's jitted call; the NNX model under ``nnx.jit`` (the way NNX code runs
a model), by default, with the model donated (``donate_argnums=0``) and with ``graph_updates=False``; and
the NNX model called directly (the linen backend's compiled program). Default ``nnx.jit`` returns every
Variable of the model from the compiled program so that it can write them back, and XLA copies each
parameter to do so (flax 0.12); donating the model lets XLA hand the parameter buffers back instead, and
``graph_updates=False`` returns only the Variables that changed. The first call of each is timed on its
own: trace and compile included ("first call"). Then the calls are timed interleaved
(:func:`tandem.tools.timing.interleaved`). Reported: median and minimum wall ms, median CPU ms, and the
ratios of medians NNX / linen (below 1.0: NNX is faster).

Run it with ``python -m tandem.tools.bench_nnx``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .timing import interleaved, load_average

IMPLEMENTATIONS = ("linen", "nnx.jit", "nnx.jit (donated)", "nnx.jit (no graph updates)", "nnx (call)")


def _implementations(batch: int, length: int, layers: int, seed: int) -> tuple[dict[str, Callable[[], Any]], Any]:
    """The forwards as no-argument callables (results waited for), and the config they run."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from .. import BertConfig, build
    from .parity import make_batch

    config = BertConfig(num_hidden_layers=layers)
    inputs = make_batch(config, "base", batch, length, seed)  # padded rows, two token-type segments
    arrays = {k: jnp.asarray(v, dtype=jnp.int32) for k, v in inputs.items()}
    linen = build(config, task="base", backend="flax", seed=seed)
    model = build(config, task="base", backend="nnx", seed=seed)
    forward = nnx.jit(lambda model, arrays: dict(model(**arrays)))
    donated = nnx.jit(lambda model, arrays: dict(model(**arrays)), donate_argnums=0)
    forward_only = nnx.jit(lambda model, arrays: dict(model(**arrays)), graph_updates=False)
    impls: dict[str, Callable[[], Any]] = {
        "linen": lambda: jax.block_until_ready(dict(linen(**arrays))),
        "nnx.jit": lambda: jax.block_until_ready(forward(model, arrays)),
        "nnx.jit (donated)": lambda: jax.block_until_ready(donated(model, arrays)),
        "nnx.jit (no graph updates)": lambda: jax.block_until_ready(forward_only(model, arrays)),
        "nnx (call)": lambda: jax.block_until_ready(dict(model(**arrays))),
    }
    return impls, config


def bench(
    rounds: int = 10, warmup: int = 2, batch: int = 8, length: int = 128, layers: int = 12, seed: int = 0
) -> dict[str, Any]:
    """Time the implementations interleaved; returns the report :func:`main` prints."""
    if rounds < 1 or warmup < 1:
        raise ValueError(f"need rounds >= 1 and warmup >= 1, got rounds={rounds}, warmup={warmup}")
    import jax
    import numpy as np

    impls, _ = _implementations(batch, length, layers, seed)
    first: dict[str, float] = {}
    outputs = {}
    for name in IMPLEMENTATIONS:  # compiles: one program per implementation
        start = time.perf_counter()
        outputs[name] = impls[name]()
        first[name] = time.perf_counter() - start
    reference = np.asarray(outputs["linen"]["last_hidden_state"])
    diff = max(float(np.max(np.abs(np.asarray(out["last_hidden_state"]) - reference))) for out in outputs.values())
    load_before = load_average()
    times = interleaved(impls, rounds, warmup - 1)
    median = {name: t["median_ms"] for name, t in times.items()}
    median_cpu = {name: t["median_cpu_ms"] for name, t in times.items()}
    return {
        "model": f"bert-base (HF BertConfig defaults, {layers} layers), random weights, fp32",
        "batch": batch,
        "length": length,
        "rounds": rounds,
        "max_abs_diff_vs_linen": diff,
        "first_call_s": first,
        "median_ms": median,
        "min_ms": {name: t["min_ms"] for name, t in times.items()},
        "median_cpu_ms": median_cpu,
        "ratio": {name: median[name] / median["linen"] for name in IMPLEMENTATIONS[1:]},
        "cpu_ratio": {name: median_cpu[name] / median_cpu["linen"] for name in IMPLEMENTATIONS[1:]},
        "machine": {
            "cores": os.cpu_count(),
            "load_average": [load_before, load_average()],
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
    }


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}; batch {report['batch']} x length {report['length']}, {report['rounds']} rounds",
        f"{'implementation':<26} {'first call s':>12} {'median ms':>10} {'min ms':>10} {'median CPU ms':>14}",
    ]
    for name in IMPLEMENTATIONS:
        lines.append(
            f"{name:<26} {report['first_call_s'][name]:>12.2f} {report['median_ms'][name]:>10.1f} "
            f"{report['min_ms'][name]:>10.1f} {report['median_cpu_ms'][name]:>14.1f}"
        )
    for name, ratio in report["ratio"].items():
        lines.append(f"ratio {name} / linen: {ratio:.3f} wall, {report['cpu_ratio'][name]:.3f} CPU time")
    machine = report["machine"]
    load_before, load_after = machine["load_average"]
    lines.append(
        f"max |diff| vs linen (last_hidden_state): {report['max_abs_diff_vs_linen']:.1e}; {machine['cores']} cores "
        f"(load average {load_before} -> {load_after}), jax {machine['jax']} on {', '.join(machine['devices'])}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.tools.bench_nnx", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per implementation (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per implementation (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--length", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (default 12, bert-base)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    args = parser.parse_args(argv)
    report = bench(args.rounds, args.warmup, args.batch, args.length, args.layers, args.seed)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
