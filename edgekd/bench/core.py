"""`benchmark`: latency, throughput, memory, layer profile, executed precision and SLO verdict
of one deployable artifact on one target profile.

Nothing is reported as measured unless it ran on the profile's runtime and device on this host:
an absent device gets `not-measured` with the reason, plus (when the profile gives peak
figures) a roofline estimate that is labelled as such and kept out of the verdict.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgekd.bench.artifact import Artifact, load_artifact
from edgekd.bench.estimate import roofline_estimate
from edgekd.bench.feeds import Feeds, build_feeds
from edgekd.bench.memory import MemoryFigures, MemoryProbeFailed, measure_peak_memory
from edgekd.runtimes import PrecisionReport, assess_precision
from edgekd.runtimes import ComputeOp, LayerTime, Session, SessionConfig, open_session
from edgekd.bench.slo import SloVerdict, check_slo
from edgekd.bench.stats import Timing, latency_stats, time_sync
from edgekd.errors import BadInput
from edgekd.host import isa_summary
from edgekd.targets import Target, availability

Inputs = Union[np.ndarray, Mapping[str, np.ndarray], None]

_PROFILE_BUDGET_S = 1.0  # time spent on the instrumented (per-layer) runs
_MEMORY_RUNS = 5  # inferences in the memory probe: the peak is reached on the first
_FEW_SAMPLES = 100  # below this, p99 is close to the maximum and not a stable figure

MAX_TIME_BUDGET_S = 600.0
"""Longest timed loop (10 minutes, MLPerf's minimum run): every timed run keeps its sample in
memory, and a longer (or infinite) budget buys no steadier percentiles, only a hung benchmark."""
MAX_RUNS = 100_000
"""Most warm-up or minimum timed runs: enough for a stable p99.9; beyond it a typo that never ends."""


@dataclass
class BenchResult:
    name: str  # the target profile's name
    model: str
    runtime: str
    runtime_device: str
    available: bool
    reason: Optional[str]
    model_size_mb: float
    slo: SloVerdict
    batch_size: int
    threads: Optional[int]
    host: str
    inputs: dict[str, dict]  # name -> {"shape", "dtype"}
    input_source: str  # "samples" | "generated"
    latency_ms: Optional[dict[str, float]] = None  # p50/p90/p95/p99/mean/std/min/max
    iterations: int = 0
    throughput_per_s: Optional[float] = None  # samples per second, sync
    memory: Optional[MemoryFigures] = None
    precision: Optional[PrecisionReport] = None
    layers: list[dict] = field(default_factory=list)  # slowest first: name, op, exec_type, time_ms, share
    estimate: Optional[dict] = None  # roofline figures for an absent device; never measured
    runtime_settings: dict[str, str] = field(default_factory=dict)  # effective streams/threads/hint
    warnings: list[str] = field(default_factory=list)

    @property
    def peak_memory_mb(self) -> Optional[float]:
        return self.memory.model_mb if self.memory else None

    @property
    def figures(self) -> dict[str, Optional[float]]:
        """The measured figures under the SLO's key names."""
        latency = self.latency_ms or {}
        return {"latency_p95_ms": latency.get("p95"), "latency_p50_ms": latency.get("p50"),
                "peak_memory_mb": self.peak_memory_mb, "model_size_mb": self.model_size_mb}

    def to_dict(self) -> dict:
        """The contract's `targets` entry of report.json, followed by the extra detail."""
        latency = self.latency_ms or {key: None for key in ("p50", "p90", "p95", "p99")}
        precision = self.precision
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "estimated": self.estimate is not None,
            "latency_ms": dict(latency),
            "throughput_per_s": self.throughput_per_s,
            "peak_memory_mb": self.peak_memory_mb,
            "model_size_mb": self.model_size_mb,
            "slo": self.slo.to_dict(),
            "model": self.model,
            "runtime": self.runtime,
            "runtime_device": self.runtime_device,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "runtime_settings": dict(self.runtime_settings),
            "iterations": self.iterations,
            "inputs": self.inputs,
            "input_source": self.input_source,
            "process_peak_memory_mb": self.memory.process_peak_mb if self.memory else None,
            "baseline_memory_mb": self.memory.baseline_mb if self.memory else None,
            "executed_precision": precision.executed if precision else None,
            "int8_executed": precision.int8_executed if precision else None,
            "precision_mismatch": precision.mismatch if precision else False,
            "precision": precision.to_dict() if precision else None,
            "layers": self.layers,
            "host": self.host,
            "estimate": self.estimate,
            "warnings": list(self.warnings),
        }


def benchmark(*, model: Union[str, Path], target: Target, inputs: Inputs = None,
              dynamic_dims: Optional[dict[str, int]] = None, warmup: int = 20, min_iterations: int = 100,
              time_budget_s: float = 3.0, measure_memory: bool = True, profile_layers: bool = True,
              top_layers: int = 10, metric_retention: Optional[float] = None,
              speedup: Optional[float] = None) -> BenchResult:
    """Benchmark `model` (.onnx or OpenVINO .xml) on `target` and check its SLOs.

    Timing: `warmup` untimed runs, then sync runs until `min_iterations` are done and
    `time_budget_s` has passed. Inputs are `inputs` (samples, batch axis first) or generated
    from the declared shapes with the profile's batch size; `dynamic_dims` sizes other dynamic axes.
    `metric_retention` and `speedup` (vs the FP32 teacher) are the caller's figures for the lower-bound SLOs.
    """
    check_run_options(warmup, min_iterations, time_budget_s, top_layers)
    artifact, feeds, result = prepare(model, target, inputs, dynamic_dims)
    if not result.available:
        result.estimate = _estimate(artifact, target, feeds, result.warnings)
        result.slo = check_slo(slo=target.slo, figures=result.figures, metric_retention=metric_retention,
                               speedup=speedup, unavailable_reason=result.reason)
        return result

    config = session_config(artifact, target, feeds)
    session = open_session(config)
    try:
        session.bind(feeds.arrays)
        timing = time_sync(session.infer, warmup=warmup, min_iterations=min_iterations, time_budget_s=time_budget_s)
        _record_timing(result, timing, feeds)
        result.runtime_settings = session.runtime_settings()
        profile_runs = int(np.clip(_PROFILE_BUDGET_S * 1e3 / max(result.latency_ms["p50"], 1e-3), 5, 100))
        ops, layer_times = _inspect(config, feeds, session, profile_runs=profile_runs if profile_layers else 0)
    finally:
        session.close()

    result.precision = assess_precision(ops=ops, graph_quantized=artifact.quantized, target_precision=target.precision)
    if result.precision.warning():
        result.warnings.append(result.precision.warning())
    result.layers = _top_layers(layer_times, top_layers)
    if measure_memory:
        try:
            result.memory = measure_peak_memory(config=config, feeds=feeds.arrays, runs=_MEMORY_RUNS)
        except MemoryProbeFailed as err:
            result.warnings.append(f"peak memory not measured: {err}")
    result.slo = check_slo(slo=target.slo, figures=result.figures, metric_retention=metric_retention, speedup=speedup)
    return result


def measure_latency(*, model: Union[str, Path], target: Target, inputs: Inputs = None,
                    dynamic_dims: Optional[dict[str, int]] = None, warmup: int = 10, min_iterations: int = 50,
                    time_budget_s: float = 1.0) -> dict:
    """Sync latency percentiles only (no memory probe, no profiling): the cheap figure for tables
    that time every variant on every target. Unavailable targets give `available: False` and None figures.
    """
    check_run_options(warmup, min_iterations, time_budget_s)
    artifact, feeds, result = prepare(model, target, inputs, dynamic_dims)
    if result.available:
        session = open_session(session_config(artifact, target, feeds))
        try:
            session.bind(feeds.arrays)
            _record_timing(result, time_sync(session.infer, warmup=warmup, min_iterations=min_iterations,
                                             time_budget_s=time_budget_s), feeds)
        finally:
            session.close()
    latency = result.latency_ms or {key: None for key in ("p50", "p90", "p95", "p99", "mean", "std")}
    return {"available": result.available, "reason": result.reason, **latency,
            "iterations": result.iterations, "throughput_per_s": result.throughput_per_s,
            "batch_size": result.batch_size, "warnings": result.warnings}


def check_run_options(warmup: int, min_iterations: int, time_budget_s: float, top_layers: int = 0) -> None:
    """Bounded before anything runs: `inf`, `nan` or a huge count would hang or overflow the timed loop."""
    if not _whole(warmup, 0, MAX_RUNS):
        raise BadInput(f"timing options: warmup (--warmup) must be a whole number in [0, {MAX_RUNS}], got {warmup!r}")
    if not _whole(min_iterations, 1, MAX_RUNS):
        raise BadInput(f"timing options: iterations (--iterations) must be a whole number in [1, {MAX_RUNS}], "
                       f"got {min_iterations!r}")
    if not (isinstance(time_budget_s, numbers.Real) and not isinstance(time_budget_s, bool)
            and 0 <= time_budget_s <= MAX_TIME_BUDGET_S):
        raise BadInput(f"timing options: time budget (--time) must be seconds in [0, {MAX_TIME_BUDGET_S:g}], "
                       f"got {time_budget_s!r}")
    if not _whole(top_layers, 0, math.inf):
        raise BadInput(f"top_layers (--top) must be a whole number >= 0, got {top_layers!r}")


def _whole(value, low: int, high: float) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def prepare(model, target: Target, inputs: Inputs,
            dynamic_dims: Optional[dict[str, int]]) -> tuple[Artifact, Feeds, BenchResult]:
    """Validate the artifact against the target, build the inputs, and start the result."""
    artifact = load_artifact(model)
    if target.runtime == "onnxruntime" and artifact.format != "onnx":
        raise BadInput(f"{artifact.path}: target '{target.name}' runs ONNX Runtime, which cannot load OpenVINO IR; "
                       "benchmark the .onnx file")
    feeds = build_feeds(artifact=artifact, batch_size=target.batch_size, inputs=inputs, dynamic_dims=dynamic_dims)
    available, reason, host_warnings = availability(target)
    result = BenchResult(
        name=target.name, model=str(artifact.path), runtime=target.runtime, runtime_device=target.runtime_device,
        available=available, reason=reason, model_size_mb=artifact.size_mb, slo=SloVerdict("not-measured"),
        batch_size=feeds.batch_size, threads=target.threads, host=isa_summary(),
        inputs={name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in feeds.arrays.items()},
        input_source=feeds.source, warnings=[*host_warnings, *feeds.warnings],
    )
    return artifact, feeds, result


def session_config(artifact: Artifact, target: Target, feeds: Feeds) -> SessionConfig:
    return SessionConfig(
        model=str(artifact.path), runtime=target.runtime, device=target.runtime_device, threads=target.threads,
        static_shapes=feeds.shapes() if target.static_shapes else None, named_dims=dict(feeds.named_dims),
    )


def _record_timing(result: BenchResult, timing: Timing, feeds: Feeds) -> None:
    result.latency_ms = latency_stats(timing.samples_ms)
    result.iterations = timing.iterations
    result.throughput_per_s = feeds.batch_size * timing.iterations / timing.wall_s if timing.wall_s > 0 else None
    if timing.iterations < _FEW_SAMPLES:
        result.warnings.append(f"only {timing.iterations} timed runs: p99 is close to the maximum, not a stable "
                               "figure (raise the iterations or the time budget)")


def _inspect(config: SessionConfig, feeds: Feeds, timed: Session, *,
             profile_runs: int) -> tuple[list[ComputeOp], list[LayerTime]]:
    """The executed compute ops and, when `profile_runs` > 0, per-layer times.

    OpenVINO shows the executed graph of the timed session itself; ONNX Runtime shows its
    optimized graph only in a session opened to dump it, which also carries the profiler.
    Profiling runs in that separate session so its overhead never touches the timed figures.
    """
    own_graph = config.runtime == "openvino"
    if own_graph and not profile_runs:
        return timed.compute_ops(), []
    instrumented = open_session(config, instrumented=True)
    try:
        instrumented.bind(feeds.arrays)
        layer_times = instrumented.profile_layers(profile_runs) if profile_runs else []
        return (timed if own_graph else instrumented).compute_ops(), layer_times
    finally:
        instrumented.close()


def _top_layers(layer_times: list[LayerTime], top: int) -> list[dict]:
    total = sum(layer.time_ms for layer in layer_times)
    ranked = sorted(layer_times, key=lambda layer: layer.time_ms, reverse=True)[: max(0, top)]
    return [{"name": layer.name, "op": layer.op, "exec_type": layer.exec_type, "time_ms": layer.time_ms,
             "share": layer.time_ms / total if total > 0 else 0.0} for layer in ranked]


def _estimate(artifact: Artifact, target: Target, feeds: Feeds, warnings: list[str]) -> Optional[dict]:
    """The roofline estimate, or None with a warning when the graph cannot be analysed."""
    input_bytes = sum(a.nbytes for a in feeds.arrays.values())
    try:
        return roofline_estimate(artifact=artifact, target=target, shapes=feeds.shapes(), input_bytes=input_bytes,
                                 batch_size=feeds.batch_size)
    except (BadInput, RuntimeError) as err:
        warnings.append(f"no roofline estimate: the graph could not be analysed ({err})")
        return None
