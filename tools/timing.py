"""Side-by-side timing for the benchmarks: every implementation once per round, in a rotated order.

These machines are noisy; timing the implementations interleaved, in an order that rotates from round to
round, makes slow drifts hit all of them alike, so the ratios of their medians hold where absolute times
do not. CPU time (process time) is reported beside wall time: it is steadier when other processes compete
for the cores.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved(impls: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 0) -> dict[str, dict[str, float]]:
    """``{name: {"median_ms", "min_ms", "median_cpu_ms"}}`` over ``rounds`` rounds, after ``warmup`` untimed
    rounds (each callable must wait for its result, e.g. ``jax.block_until_ready``)."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(impls)
    for _ in range(warmup):
        for name in names:
            impls[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            impls[name]()
            wall[name].append(1e3 * (time.perf_counter() - start))
            cpu[name].append(1e3 * (time.process_time() - start_cpu))
    return {
        name: {
            "median_ms": statistics.median(wall[name]),
            "min_ms": min(wall[name]),
            "median_cpu_ms": statistics.median(cpu[name]),
        }
        for name in names
    }


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0
