"""bert-base forward on CPU: tandem vs HF transformers, in torch and in flax, on the same weights.

What is timed: one forward of the base model (``last_hidden_state`` and ``pooler_output``) on a padded
fp32 batch, for four implementations: our torch backend, HF ``BertModel`` (its default sdpa attention),
our flax backend (jitted) and HF ``FlaxBertModel`` (its ``__call__`` under ``jax.jit``). Torch runs under
``torch.inference_mode()``; jax results are waited for with ``block_until_ready``. After untimed warm-up
calls (which include jit compilation), each round times every implementation once, in an order rotated
from round to round, so slow drifts of a noisy machine hit all four alike. Reported: the median and
minimum wall ms per forward, the median CPU ms (process time: all threads, steadier than wall time when
other processes compete for the cores) and the ratios of medians ours / HF per backend (below 1.0: we
are faster).

Run it with ``tandem bench`` or ``python -m tandem.tools.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .timing import interleaved, load_average

IMPLEMENTATIONS = ("tandem torch", "HF torch", "tandem flax", "HF flax")
PAIRS = {"torch": ("tandem torch", "HF torch"), "flax": ("tandem flax", "HF flax")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per implementation (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per implementation, compilation included (default 2)"
    )
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--length", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads for torch and XLA (default: the frameworks' own choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")


def _set_threads(threads: int) -> None:
    """Pin both frameworks to ``threads`` intra-op threads. XLA reads its flags when jax starts."""
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if "jax" in sys.modules:
        raise ValueError("--threads must be set before jax is imported")
    flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import torch

    torch.set_num_threads(threads)


def _implementations(batch: int, length: int, seed: int) -> tuple[dict[str, Callable[[], Any]], float]:
    """The four forwards as no-argument callables, and the largest |diff| between ours and HF's outputs."""
    import jax
    import numpy as np
    import torch
    import transformers

    from .. import BertConfig, build
    from .parity import make_batch

    config = BertConfig()
    hf_config = transformers.BertConfig(**config.to_hf_dict())
    inputs = make_batch(config, "base", batch, length, seed)  # padded rows, two token-type segments

    ours_torch = build(config, task="base", backend="torch", seed=seed)
    hf_torch = transformers.BertModel(hf_config).eval()  # default attention: sdpa
    hf_torch.load_state_dict(ours_torch.state_dict())
    ours_flax = build(config, task="base", backend="flax", seed=seed)
    hf_flax = transformers.FlaxBertModel(hf_config, _do_init=False)

    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    arrays = {k: jax.numpy.asarray(v, dtype=jax.numpy.int32) for k, v in inputs.items()}
    hf_flax_jit = jax.jit(
        lambda params, input_ids, attention_mask, token_type_ids: hf_flax(
            input_ids, attention_mask, token_type_ids, params=params, return_dict=False
        )
    )

    def torch_call(model: torch.nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model(**tensors)

        return run

    impls: dict[str, Callable[[], Any]] = {
        "tandem torch": torch_call(ours_torch),
        "HF torch": torch_call(hf_torch),
        # ModelOutput is a dict subclass, which jax does not treat as a pytree: wait on a plain dict.
        "tandem flax": lambda: jax.block_until_ready(dict(ours_flax(**arrays))),
        "HF flax": lambda: jax.block_until_ready(hf_flax_jit(ours_flax.params, **arrays)),
    }
    results = {name: impls[name]() for name in IMPLEMENTATIONS}  # doubles as the first warm-up call
    last = {
        "tandem torch": results["tandem torch"]["last_hidden_state"].numpy(),
        "HF torch": results["HF torch"].last_hidden_state.numpy(),
        "tandem flax": np.asarray(results["tandem flax"]["last_hidden_state"]),
        "HF flax": np.asarray(results["HF flax"][0]),
    }
    diff = max(float(np.max(np.abs(last[a] - last[b]))) for a, b in PAIRS.values())
    return impls, diff


def bench(rounds: int = 10, warmup: int = 2, batch: int = 8, length: int = 128, seed: int = 0) -> dict[str, Any]:
    """Time the four implementations interleaved; returns the report :func:`run` prints."""
    if rounds < 1 or warmup < 1:
        raise ValueError(f"need rounds >= 1 and warmup >= 1, got rounds={rounds}, warmup={warmup}")
    import jax
    import torch

    try:
        import transformers
    except ImportError as err:
        raise ImportError("tandem bench compares with HF transformers: pip install 'transformers<5'") from err

    impls, diff = _implementations(batch, length, seed)
    load_before = load_average()
    times = interleaved(impls, rounds, warmup - 1)
    median = {name: t["median_ms"] for name, t in times.items()}
    median_cpu = {name: t["median_cpu_ms"] for name, t in times.items()}
    return {
        "model": "bert-base (HF BertConfig defaults), random weights, fp32",
        "batch": batch,
        "length": length,
        "rounds": rounds,
        "max_abs_diff_ours_vs_hf": diff,
        "median_ms": median,
        "min_ms": {name: t["min_ms"] for name, t in times.items()},
        "median_cpu_ms": median_cpu,
        "ratio": {backend: median[ours] / median[hf] for backend, (ours, hf) in PAIRS.items()},
        "cpu_ratio": {backend: median_cpu[ours] / median_cpu[hf] for backend, (ours, hf) in PAIRS.items()},
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_average": [load_before, load_average()],
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "jax": jax.__version__,
            "transformers": transformers.__version__,
        },
    }


def _cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}; batch {report['batch']} x length {report['length']}, {report['rounds']} rounds",
        f"{'implementation':<14} {'median ms':>10} {'min ms':>10} {'median CPU ms':>14}",
    ]
    for name in IMPLEMENTATIONS:
        lines.append(
            f"{name:<14} {report['median_ms'][name]:>10.1f} {report['min_ms'][name]:>10.1f} "
            f"{report['median_cpu_ms'][name]:>14.1f}"
        )
    for backend, ratio in report["ratio"].items():
        lines.append(f"ratio ours/HF ({backend}): {ratio:.3f} wall, {report['cpu_ratio'][backend]:.3f} CPU time")
    machine = report["machine"]
    load_before, load_after = machine["load_average"]
    lines.append(
        f"max |diff| ours vs HF (last_hidden_state): {report['max_abs_diff_ours_vs_hf']:.1e}; "
        f"{machine['cpu']}, {machine['cores']} cores (load average {load_before} -> {load_after}), "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), jax {machine['jax']}, "
        f"transformers {machine['transformers']}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``tandem bench``: print the table (or ``--json``); 0 on success."""
    if args.threads is not None:
        _set_threads(args.threads)
    report = bench(args.rounds, args.warmup, args.batch, args.length, args.seed)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.tools.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
