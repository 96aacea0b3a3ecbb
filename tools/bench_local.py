"""Long-input ModernBERT forward on CPU: tandem torch and flax against HF PyTorch (SDPA), same weights.

The model is ModernBERT-base wide (hidden 768, 12 heads, intermediate 1152, a local window of 128) with 4
layers (global attention at layer 0 and 3, sliding-window attention at 1 and 2), batch 1. HF PyTorch runs
every layer as full attention under an (S, S) mask; tandem's window layers compute only the band
(:class:`tandem.core.nodes.SlidingWindowAttention`), so their cost grows linearly with the length.

Each (implementation, length) runs in its own process, so that its peak memory is its own: the model is
loaded from one HF checkpoint written at the start, one warm-up forward (the flax compile) is followed by
``--rounds`` timed ones. Reported per length: median wall seconds, ours/HF, and the peak resident memory
of the forwards above what the process held once the model and inputs were in place (the peak ``VmHWM``
counted afresh from there through ``/proc/self/clear_refs``, minus the resident size then); then the growth
of each time from the shortest to the longest length.

Run it with ``python -m tandem.tools.bench_local`` (CPU-heavy: minutes at 8192).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

IMPLEMENTATIONS = ("hf", "torch", "flax")
CONFIG = {
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 1152,
    "local_attention": 128,
    "num_hidden_layers": 4,
    "global_attn_every_n_layers": 3,
}


def _rss_mb() -> float:
    """The current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _reset_peak() -> None:
    """Start the peak resident size (VmHWM) afresh, so that loading the model does not count (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb() -> float:
    """The peak resident size since :func:`_reset_peak`, in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def worker(impl: str, directory: str, length: int, rounds: int) -> dict[str, Any]:
    """Load the checkpoint as ``impl``, run 1 + ``rounds`` forwards of a (1, length) input, report."""
    import numpy as np
    import torch

    ids = np.random.default_rng(0).integers(5, 50000, size=(1, length))
    mask = np.ones((1, length), np.int64)
    if impl == "hf":
        import transformers

        model = transformers.ModernBertModel.from_pretrained(directory, attn_implementation="sdpa").eval()
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

        def forward() -> Any:
            with torch.no_grad():
                return model(**inputs).last_hidden_state
    elif impl == "torch":
        import tandem

        model = tandem.from_pretrained(directory, backend="torch")
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

        def forward() -> Any:
            with torch.no_grad():
                return model(**inputs).last_hidden_state
    else:
        import jax

        import tandem

        model = tandem.from_pretrained(directory, backend="flax")
        arrays = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}

        def forward() -> Any:
            return jax.block_until_ready(model(**arrays).last_hidden_state)

    baseline = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    forward()
    first = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    peak = _peak_mb()
    return {
        "impl": impl,
        "length": length,
        "first_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_extra_mb": peak - baseline,
    }


def bench(lengths: list[int], rounds: int, impls: tuple[str, ...] = IMPLEMENTATIONS) -> dict[str, Any]:
    """Write the checkpoint, run every (implementation, length) in a subprocess, collect the reports."""
    import torch
    import transformers

    results = []
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        config = transformers.ModernBertConfig(**CONFIG, max_position_embeddings=max(lengths))
        transformers.ModernBertModel(config).save_pretrained(directory)
        for length in lengths:
            for impl in impls:
                command = [sys.executable, "-m", "tandem.tools.bench_local", "--worker", impl, directory]
                command += ["--lengths", str(length), "--rounds", str(rounds)]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr)
    return {"config": CONFIG, "rounds": rounds, "results": results}


def report(data: dict[str, Any]) -> str:
    rows = {(r["impl"], r["length"]): r for r in data["results"]}
    lengths = sorted({r["length"] for r in data["results"]})
    lines = [f"{'length':>7} {'impl':>6} {'median s':>9} {'ours/HF':>8} {'peak MB':>8} {'first s':>8}"]
    for length in lengths:
        hf = rows[("hf", length)]["median_s"]
        for impl in IMPLEMENTATIONS:
            r = rows[(impl, length)]
            ratio = "" if impl == "hf" else f"{r['median_s'] / hf:.2f}"
            timing = f"{r['median_s']:>9.2f} {ratio:>8} {r['peak_extra_mb']:>8.0f} {r['first_s']:>8.2f}"
            lines.append(f"{length:>7} {impl:>6} {timing}")
    short, long = lengths[0], lengths[-1]
    growth = ", ".join(
        f"{impl} x{rows[(impl, long)]['median_s'] / rows[(impl, short)]['median_s']:.1f}" for impl in IMPLEMENTATIONS
    )
    lines.append(f"time growth {short} -> {long} (x{long / short:.0f} length): {growth}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, directory = args.worker
        print(json.dumps(worker(impl, directory, args.lengths[0], args.rounds)))
        return
    data = bench(args.lengths, args.rounds)
    print(json.dumps(data, indent=2) if args.json else report(data))


if __name__ == "__main__":
    main()
