"""`edgekd profile`: which student fits each target's budget, measured on the target's runtime.

A user comes with a device and a budget (p95 under 4 ms, under 200 MB), not a prune ratio. For
each target this builds the teacher and a ladder of candidate students of the model's family
(`ModelFamily.ladder`: channel ratios for CNNs, depth x FFN width for text encoders) structurally (pruned or
cut; latency does not depend on trained values), exports each in the precision the target
deploys (INT8 QDQ in its scheme, FP16 or FP32; one export serves every target of the same
precision and shapes), times it there, and picks the most capable candidate that meets every
latency / memory / size / speed-up SLO with a safety margin. A target's candidates, its teacher and
the FP32 teacher (what `min_speedup` is measured against) are timed together in interleaved rounds
(edgekd.bench.time_interleaved): on a shared host one loop per candidate let background load pick
the student (a 0.36x-pruned ResNet measured slower than a 0.25x one). An absent device gets the
roofline estimate from its profile's `peak` figures, marked `estimated` and never chosen as a
measured fit.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from edgekd.checkpoint import LoadedModel
from edgekd.data import Dataset
from edgekd.errors import BadInput
from edgekd.families import ModelFamily, family_for
from edgekd.recipe import PruneSection
from edgekd.targets import Target, availability

DEFAULT_MARGIN = 0.10  # a candidate must meet each limit with this share to spare: timing on a shared host varies
UPPER_LIMITS = ("latency_p95_ms", "latency_p50_ms", "peak_memory_mb", "model_size_mb")
SPEEDUP_KEY = "min_speedup"  # a lower limit on the candidate's `speedup`: the FP32 teacher's p50 over its own
SPEEDUP = "speedup"
SLO_KEYS = (*UPPER_LIMITS, SPEEDUP_KEY)
CALIBRATION_SAMPLES = 64  # PTQ ranges for a latency-only artifact: enough for realistic QDQ placement
ROUND_TIME_S = 0.02
"""Timed runs per candidate per round (x 21 rounds): ~5 s of timing for ten artifacts on a target."""
FP32_TEACHER = "teacher-fp32"  # the reference `speedup` is measured against, timed in the same rounds


@dataclass
class Candidate:
    student: str  # a spec `--student` accepts ("teacher" for the teacher itself)
    precision: str  # what the target runs: int8 | fp16 | fp32
    params: int
    macs: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    peak_memory_mb: float | None  # None: not measured, at most the teacher's (which meets the limit)
    model_size_mb: float
    estimated: bool  # an absent device's roofline estimate, never a measurement
    fits: bool
    misses: list[str] = field(default_factory=list)  # the SLO keys it does not meet (with the margin)
    speedup: float | None = None  # the FP32 teacher's p50 over this candidate's, same rounds
    latency_spread_ms: list[float] | None = None  # interquartile band of its round p50s


@dataclass
class TargetProfile:
    name: str
    available: bool
    reason: str | None
    budget: dict  # the SLO limits that bind a choice, and the margin kept
    candidates: list[Candidate]
    chosen: str | None
    why: str
    teacher_layers: list[dict] = field(default_factory=list)  # the teacher's slowest layers there
    skipped: dict = field(default_factory=dict)  # spec -> why it is not a candidate on this target

    def as_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


@dataclass
class ProfileResult:
    model: str
    targets: list[TargetProfile]

    def as_dict(self) -> dict:
        return {"model": self.model, "targets": [t.as_dict() for t in self.targets]}

    @property
    def all_fit(self) -> bool:
        """Every measured target with a budget has a student that fits it (and one target was measured)."""
        binding = [t for t in self.targets if t.available and t.budget["limits"]]
        return bool(binding) and all(t.chosen is not None for t in binding)


def _budget(target: Target, margin: float) -> dict:
    limits = {key: getattr(target.slo, key) for key in SLO_KEYS if getattr(target.slo, key) is not None}
    return {"limits": limits, "margin": margin}


def _misses(figures: dict, budget: dict) -> list[str]:
    """The limits a candidate does not meet with the margin to spare (a missing figure misses): upper
    limits by a `margin` share, the speed-up floor by the same share of its latency."""
    keep = 1.0 - budget["margin"]
    misses = []
    for key, limit in budget["limits"].items():
        figure = figures.get(SPEEDUP if key == SPEEDUP_KEY else key)
        meets = figure is not None and (figure * keep >= limit if key == SPEEDUP_KEY else figure <= limit * keep)
        if not meets:
            misses.append(key)
    return misses


class _Artifacts:
    """Exports shared across targets: one per (student, precision, scheme, shapes, formats)."""

    def __init__(self, family: ModelFamily, work: Path):
        self.family, self.work, self.cache = family, work, {}

    def path(self, key: str, model: nn.Module, target: Target) -> Path:
        from edgekd.export import export

        precision = target.precision
        scheme = target.quantization.model_dump_json() if precision == "int8" else ""
        openvino = target.runtime == "openvino"
        cache_key = (key, precision, scheme, target.static_shapes, openvino)
        if cache_key not in self.cache:
            stem = f"c{len(self.cache)}"
            exported = self._int8(model, target) if precision == "int8" else model
            inputs = self.family.export_inputs(static_shapes=target.static_shapes)
            inputs.pop("labels", None)  # latency only: no parity or task check over the held-out set
            inputs["parity_inputs"] = inputs["example_inputs"]
            result = export(model=self.family.export_view(exported), out_dir=self.work, name=stem, gate=False,
                            formats=("openvino",) if openvino else ("onnx",),
                            precision="fp16" if precision == "fp16" else "fp32", **inputs)
            self.cache[cache_key] = result.openvino_xml if openvino else result.onnx
        return self.cache[cache_key]

    def _int8(self, model: nn.Module, target: Target) -> nn.Module:
        from edgekd.quant import quantize_ptq, weight_bits_for_target
        from edgekd.quant.qat import calibration_batches

        batches = calibration_batches(self.family.data.x_train, collate=self.family.collate(),
                                      samples=CALIBRATION_SAMPLES, batch_size=CALIBRATION_SAMPLES, seed=0)
        return quantize_ptq(model=model, scheme=target.quantization, calibration=batches,
                            weight_bits=weight_bits_for_target(target)[0])


def _size_mb(path: Path) -> float:
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def _measure(path: Path, target: Target, sample, *, memory: bool, layers: bool):
    from edgekd.bench import benchmark

    return benchmark(model=path, target=target, inputs=sample, warmup=10, min_iterations=30, time_budget_s=0.3,
                     measure_memory=memory, profile_layers=layers, top_layers=5)


def _time_together(paths: dict[str, Path], target: Target, sample) -> dict:
    """Every artifact of one target (candidates, teacher, FP32 teacher) in the same interleaved rounds."""
    from edgekd.bench import ROUNDS, time_interleaved

    return time_interleaved(models=paths, target=target, inputs=sample, rounds=ROUNDS, round_time_s=ROUND_TIME_S)


def _candidate(spec: str, model: nn.Module, path: Path, target: Target, budget: dict, sample, *,
               timed, reference, memory_bound: float | None) -> tuple[Candidate, object]:
    """One row. Latency from the target's interleaved rounds (`timed`, None on an absent device: the roofline
    estimate instead), speed-up against the FP32 teacher's rounds (`reference`). Memory is measured (an
    isolated process each, the slow part) unless `memory_bound`, the teacher's measured peak, already meets
    the limit: a smaller student of the same family then does too."""
    from edgekd.prune import count_params_macs

    params, macs = count_params_macs(model=model, example_inputs=_example(sample))
    wants_memory = "peak_memory_mb" in budget["limits"] and memory_bound is None
    measured = None
    if timed is None or wants_memory or spec == "teacher":  # the teacher also gives its slowest layers
        measured = _measure(path, target, sample, memory=wants_memory, layers=spec == "teacher")
    if timed is None:
        p50 = p95 = measured.estimate["latency_ms"]
        spread = speedup = None
    else:
        p50, p95, spread = timed.p50, timed.p95, [round(v, 5) for v in timed.spread]
        speedup = reference.p50 / timed.p50 if reference is not None else None
    peak = measured.peak_memory_mb if wants_memory else None
    figures = {"latency_p50_ms": p50, "latency_p95_ms": p95, "peak_memory_mb": peak if peak is not None else memory_bound,
               "model_size_mb": _size_mb(path), SPEEDUP: speedup}
    misses = _misses(figures, budget)
    candidate = Candidate(student=spec, precision=target.precision, params=params, macs=macs, latency_p50_ms=p50,
                          latency_p95_ms=p95, peak_memory_mb=peak,
                          model_size_mb=round(figures["model_size_mb"], 4), estimated=timed is None,
                          fits=not misses and timed is not None, misses=misses,
                          speedup=None if speedup is None else round(speedup, 3), latency_spread_ms=spread)
    return candidate, measured


def _example(sample):
    """The input `count_params_macs` traces with: the family's example batch, as tensors."""
    import torch

    if isinstance(sample, dict):
        return tuple(torch.from_numpy(a) for a in sample.values())
    return torch.from_numpy(sample)


def _choose(candidates: list[Candidate], budget: dict, available: bool, reason: str | None) -> tuple[str | None, str]:
    """The most capable (most parameters) student that fits, and a sentence saying why."""
    if not budget["limits"]:
        return None, "the profile sets no latency, memory, size or speed-up SLO: nothing to fit"
    if not available:
        return None, f"not measured ({reason}); figures are roofline estimates, never a measured fit"
    students = [c for c in candidates if c.student != "teacher"]
    fitting = [c for c in students if c.fits]
    limits = ", ".join(f"{k} {v:g}" for k, v in budget["limits"].items())
    if not fitting:
        fastest = min(students, key=lambda c: c.latency_p95_ms or float("inf"))
        needs, keep = [], 1 - budget["margin"]
        for key, limit in budget["limits"].items():
            if key == SPEEDUP_KEY:
                best = max((c.speedup for c in students if c.speedup is not None), default=None)
                if best is not None and not best * keep >= limit:
                    needs.append(f"{key} <= {best * keep:.4g}")
                continue
            best = min((getattr(c, key) for c in students if getattr(c, key) is not None), default=None)
            if best is not None and not best <= limit * keep:
                needs.append(f"{key} >= {best / keep:.4g}")
        return None, (f"no candidate meets {limits} with {budget['margin']:.0%} to spare; the fastest, "
                      f"{fastest.student}, measured p95 {fastest.latency_p95_ms:.3f} ms, {fastest.model_size_mb:.3f} MB "
                      f"(misses {', '.join(fastest.misses)}); the budget would need "
                      f"{' and '.join(needs) or 'a smaller student than the ladder holds'}")
    best = max(fitting, key=lambda c: c.params)
    larger = [c for c in students if c.params > best.params]
    next_up = min(larger, key=lambda c: c.params) if larger else None
    speedup = f", {best.speedup:.2f}x the FP32 teacher" if best.speedup is not None else ""
    why = (f"{best.student} is the largest student that fits {limits} with {budget['margin']:.0%} to spare "
           f"(p95 {best.latency_p95_ms:.3f} ms measured as {best.precision.upper()}{speedup})")
    if next_up is not None:
        speedup = f", {next_up.speedup:.2f}x" if next_up.speedup is not None else ""
        why += (f"; {next_up.student} measured p95 {next_up.latency_p95_ms:.3f} ms{speedup} "
                f"(misses {', '.join(next_up.misses)})")
    return best.student, why


def profile(*, teacher: LoadedModel, data: Dataset, targets: list[Target], margin: float = DEFAULT_MARGIN,
            model_name: str = "model", seed: int = 0, channel_multiple: int | None = None) -> ProfileResult:
    """Measure the teacher and every ladder candidate on each target; choose per target (see module docstring).
    `channel_multiple` rounds every target's candidates alike (a run that makes one student for all of
    them); by default each target rounds to its own."""
    if not 0 <= margin < 1:
        raise BadInput(f"margin {margin!r}: the share of each SLO to keep spare must be in [0, 1)")
    if not targets:
        raise BadInput("no targets given: name at least one target profile (see `edgekd targets`)")
    family = family_for(model=teacher.model, data=data, label=model_name)
    specs = family.ladder()
    _, sample = family.runtime_inputs()
    work = Path(tempfile.mkdtemp(prefix="edgekd-profile-"))
    try:
        artifacts = _Artifacts(family, work)
        students: dict[tuple[str, int], nn.Module | str] = {}
        profiles = []
        for target in targets:
            available, reason, _ = availability(target)
            budget = _budget(target, margin)
            models, skipped, sizes = [("teacher", teacher.model)], {}, {_params(teacher.model): "the teacher"}
            multiple = channel_multiple or target.channel_multiple
            for spec in specs:
                key = (spec, multiple)
                if key not in students:
                    students[key] = _structure(family, spec, multiple, seed)
                student = students[key]
                if isinstance(student, str):
                    skipped[spec] = student
                elif _params(student) in sizes:  # rounding to the channel multiple made them the same model
                    skipped[spec] = f"the same model as {sizes[_params(student)]} at channel multiple {multiple}"
                else:
                    sizes[_params(student)] = spec
                    models.append((spec, student))
            paths = {spec: artifacts.path(spec if spec == "teacher" else f"{spec}@{multiple}", model, target)
                     for spec, model in models}  # the teacher is not rounded: exported once per precision
            timed = reference = None
            if available:
                fp32 = target.model_copy(update={"precision": "fp32"})
                extra = {} if target.precision == "fp32" else {FP32_TEACHER: artifacts.path("teacher", teacher.model, fp32)}
                timed = _time_together({**paths, **extra}, target, sample)
                reference = timed[FP32_TEACHER if extra else "teacher"]
            rows, teacher_layers, memory_bound = [], [], None
            for spec, model in models:
                candidate, measured = _candidate(spec, model, paths[spec], target, budget, sample,
                                                 timed=None if timed is None else timed[spec], reference=reference,
                                                 memory_bound=memory_bound)
                rows.append(candidate)
                if spec == "teacher":
                    teacher_layers = list(measured.layers)
                    if "peak_memory_mb" not in candidate.misses:
                        memory_bound = candidate.peak_memory_mb
            chosen, why = _choose(rows, budget, available, reason)
            profiles.append(TargetProfile(target.name, available, reason, budget, rows, chosen, why, teacher_layers,
                                          skipped))
        return ProfileResult(model=model_name, targets=profiles)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _structure(family: ModelFamily, spec: str, channel_multiple: int, seed: int) -> nn.Module | str:
    """The candidate's untrained structure, or why there is none (nothing left to prune at this rounding)."""
    try:
        return family.make_student(spec, channel_multiple=channel_multiple, prune_settings=PruneSection(),
                                   seed=seed).model.eval()
    except BadInput as err:
        return str(err)


def write_profile(result: ProfileResult, path: Path) -> Path:
    from edgekd.io import write_json

    return write_json(path, json.loads(json.dumps(result.as_dict(), default=str)))


def shared_choice(result: ProfileResult) -> tuple[str | None, str]:
    """One student for every measured target with a budget: the least capable of their picks (a smaller
    student of the ladder meets every budget a larger one meets), and why; None when one has no fit."""
    binding = [t for t in result.targets if t.available and t.budget["limits"]]
    if not binding:
        return None, ("student: auto needs a measured target with a latency, memory or size SLO; "
                      + "; ".join(f"{t.name}: {t.why}" for t in result.targets))
    missing = [t for t in binding if t.chosen is None]
    if missing:
        return None, "; ".join(f"{t.name}: {t.why}" for t in missing)
    params = {c.student: c.params for t in binding for c in t.candidates}
    chosen = min((t.chosen for t in binding), key=lambda spec: params[spec])
    bound_by = [t.name for t in binding if t.chosen == chosen]
    return chosen, f"{chosen}, the largest student that fits every measured target ({', '.join(bound_by)} binds)"
