"""Artifacts timed against each other on one target, and the rule that says when two of them differ.

Timing loops run one after another see different background load: on this project's shared 2-core
host the same ONNX file measured 0.268 then 0.505 ms p50 in two consecutive runs, and two variants
of identical architecture 0.275 and 0.509 ms in one `compress`; 20 ms windows of one session's runs
here fall into modes (27, 39 and 51 us for the demo-sized student) that last from 80 ms to seconds.
So `time_interleaved` opens every artifact's session once and times them in many short rounds within
one process (A B C, B C A, C A B, ...: the start rotates so no artifact always runs right after the
same neighbour), each round a fixed number of timed runs per artifact after a short re-warm-up, so
every artifact sees the same modes. An artifact's p50 is the median of its round medians, its p95 the
median of its round p95s, and its spread the interquartile band of its round medians.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgekd.bench.core import MAX_RUNS, Inputs, check_run_options, prepare, session_config
from edgekd.bench.stats import latency_stats, time_sync
from edgekd.errors import BadInput
from edgekd.runtimes import open_session
from edgekd.targets import Target

ROUNDS = 21
"""Rounds per comparison: if the rounds of two identical artifacts were exchangeable, their interquartile
bands would miss each other 0.18% of the time with 21 rounds (simulated; 8% with 7, 0.7% with 15)."""
MIN_DIFFERENCE = 0.05
"""Smallest relative p50 difference `clearly_faster` reports: two sessions of the same ONNX file differed
consistently by up to 1.6% here (their bands apart in 5 of 24 comparisons), a difference of no use to any
decision."""
MIN_RUNS_PER_ROUND = 10  # a round's p95 then interpolates between its two slowest runs
ROUND_WARMUP = 2  # untimed runs before each round's timed ones: the other artifacts' runs evicted this one from cache


@dataclass(frozen=True)
class RoundTimes:
    """One artifact's figures from `time_interleaved`: the median and p95 of its timed runs in each round."""

    round_p50_ms: tuple[float, ...]
    round_p95_ms: tuple[float, ...]
    runs_per_round: int

    @property
    def p50(self) -> float:
        return float(np.median(self.round_p50_ms))

    @property
    def p95(self) -> float:
        return float(np.median(self.round_p95_ms))

    @property
    def spread(self) -> tuple[float, float]:
        """The interquartile band of the round medians: what `clearly_faster` compares."""
        low, high = np.quantile(self.round_p50_ms, (0.25, 0.75))
        return float(low), float(high)

    def describe(self) -> str:
        """"0.31 ms (round IQR 0.305-0.32)": the figure with the band a decision on it rests on."""
        low, high = self.spread
        return f"{self.p50:.3g} ms (round IQR {low:.3g}-{high:.3g})"

    def as_dict(self) -> dict:
        return {"p50": self.p50, "p95": self.p95, "spread": list(self.spread), "rounds": len(self.round_p50_ms),
                "runs_per_round": self.runs_per_round, "round_p50_ms": list(self.round_p50_ms)}


def clearly_faster(a: RoundTimes, b: RoundTimes) -> bool:
    """`a` is faster than `b` beyond timing noise: the interquartile bands of their round medians do not
    overlap (a's upper quartile is below b's lower one), and a's p50 is lower by more than MIN_DIFFERENCE.

    Why bands and not a minimum-over-rounds or a single p50: the round medians of two identical artifacts
    timed in the same interleaved rounds are (nearly) exchangeable, whatever the load does, so their bands
    miss each other only by chance (ROUNDS), with no noise model to fit. Why quartiles and not the lowest
    and highest round: one round in a fast or slow mode stretches a min/max band, and here min/max bands
    of 21 rounds missed a 1.25x FP32-vs-INT8 difference in 3 of 12 comparisons, the quartiles in none.
    The price: a real difference within the round-to-round spread counts as a tie, and each caller then
    keeps its cheaper default.
    """
    return a.spread[1] < b.spread[0] and a.p50 < b.p50 * (1 - MIN_DIFFERENCE)


def differ(a: RoundTimes, b: RoundTimes) -> bool:
    """Either is clearly faster than the other (`clearly_faster`)."""
    return clearly_faster(a, b) or clearly_faster(b, a)


def time_interleaved(*, models: Mapping[str, Union[str, Path]], target: Target, inputs: Inputs = None,
                     dynamic_dims: Optional[dict[str, int]] = None, rounds: int = ROUNDS, round_time_s: float = 0.05,
                     warmup: int = 10) -> dict[str, RoundTimes]:
    """Time every artifact of `models` (name -> .onnx / OpenVINO .xml) on `target` in `rounds` interleaved rounds.

    Each session first runs `warmup` times untimed; those runs also size its rounds: as many timed runs as
    fill `round_time_s` (at least MIN_RUNS_PER_ROUND), the same count in every round. Inputs as in
    `benchmark`. A target this host cannot run is BadInput: there is nothing to compare.
    """
    check_run_options(warmup, 1, round_time_s)
    if not models:
        raise BadInput("time_interleaved needs at least one artifact to time")
    if not (isinstance(rounds, numbers.Integral) and not isinstance(rounds, bool) and 1 <= rounds <= MAX_RUNS):
        raise BadInput(f"rounds must be a whole number in [1, {MAX_RUNS}], got {rounds!r}")
    prepared = {name: prepare(path, target, inputs, dynamic_dims) for name, path in models.items()}
    for _, _, result in prepared.values():
        if not result.available:
            raise BadInput(f"target '{target.name}' cannot be timed on this host: {result.reason}")
    sessions = {}
    try:
        for name, (artifact, feeds, _) in prepared.items():
            sessions[name] = open_session(session_config(artifact, target, feeds))
            sessions[name].bind(feeds.arrays)
        runs = {name: _runs_per_round(session.infer, warmup, round_time_s) for name, session in sessions.items()}
        names = list(sessions)
        p50s: dict[str, list[float]] = {name: [] for name in names}
        p95s: dict[str, list[float]] = {name: [] for name in names}
        for index in range(rounds):
            start = index % len(names)
            for name in names[start:] + names[:start]:
                timing = time_sync(sessions[name].infer, warmup=ROUND_WARMUP, min_iterations=runs[name],
                                   time_budget_s=0)
                stats = latency_stats(timing.samples_ms)
                p50s[name].append(stats["p50"])
                p95s[name].append(stats["p95"])
    finally:
        for session in sessions.values():
            session.close()
    return {name: RoundTimes(tuple(p50s[name]), tuple(p95s[name]), runs[name]) for name in names}


def _runs_per_round(infer, warmup: int, round_time_s: float) -> int:
    """Warm up (at least one run), and size a round from the warm-up's median run."""
    probe = time_sync(infer, warmup=0, min_iterations=max(warmup, 1), time_budget_s=0)
    per_run_s = float(np.median(probe.samples_ms)) / 1e3
    wanted = math.ceil(round_time_s / per_run_s) if per_run_s > 0 else MAX_RUNS
    return int(min(max(wanted, MIN_RUNS_PER_ROUND), MAX_RUNS))
