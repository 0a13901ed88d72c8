"""The timing loop and the statistics of its samples."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(samples_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99 (linear interpolation between order statistics), mean, std, min, max."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no latency samples")
    values = np.percentile(samples, PERCENTILES)
    stats = {f"p{q}": float(v) for q, v in zip(PERCENTILES, values)}
    stats["mean"] = float(samples.mean())
    stats["std"] = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    stats["min"] = float(samples.min())
    stats["max"] = float(samples.max())
    return stats


@dataclass(frozen=True)
class Timing:
    samples_ms: np.ndarray
    wall_s: float  # the whole timed loop, for throughput

    @property
    def iterations(self) -> int:
        return int(self.samples_ms.size)


def time_sync(infer: Callable[[], object], *, warmup: int, min_iterations: int, time_budget_s: float) -> Timing:
    """Call `infer` `warmup` times untimed, then time each call until both `min_iterations`
    calls are done and `time_budget_s` has passed.

    The garbage collector is paused while timing so a collection cannot land in a sample.
    """
    if min_iterations < 1:
        raise ValueError("min_iterations must be >= 1")
    for _ in range(max(0, warmup)):
        infer()
    samples: list[int] = []
    clock = time.perf_counter_ns
    budget_ns = int(max(0.0, time_budget_s) * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            infer()
            t1 = clock()
            samples.append(t1 - t0)
            if len(samples) >= min_iterations and t1 - start >= budget_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(np.asarray(samples, dtype=np.float64) / 1e6, (t1 - start) / 1e9)
