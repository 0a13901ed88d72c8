"""A small ViT of PyTorch's standard layers through edgekd, against ONNX Runtime's own INT8, on x86 ONNX Runtime.

The model: patch-embedding Conv2d (4x4 patches of a 1x16x16 image: 16 tokens), a cls token, a learned
positional embedding, `nn.TransformerEncoder` (d_model 64, 4 heads), LayerNorm and a 10-class head,
trained here on digits upsampled to 16x16 (`edgekd.data.load_data("digits16")`). Four rows, each an
exported ONNX file scored on the held-out test split and timed at batch 1 on the `x86-cpu-onnxruntime`
profile:

  teacher FP32            the trained teacher, as `edgekd compress` exported it (variants/teacher-fp32)
  teacher INT8, ORT       onnxruntime.quantization.quantize_static of that ONNX (QDQ, per-channel int8
                          weights, uint8 activations, MinMax calibration on CALIBRATION training samples
                          through a CalibrationDataReader; benchmarks/peers.py's ort_static_int8)
  student FP32 (KD)       `edgekd compress --student prune:0.5`'s KD student (variants/student-kd-fp32)
  student INT8 (QAT+KD)   its QAT+KD student (variants/student-kd-qat-int8), and what the target deploys
                          (report.json targets[].variant: an INT8 student clearly slower than its FP32 self
                          falls back to FP32)
  (extra) teacher INT8    the pipeline's own PTQ of the teacher with every compute layer INT8
                          (variants/teacher-int8-ptq): what forcing INT8 everywhere costs at this size

All four are timed together by `edgekd.bench.time_interleaved` (21 interleaved rounds in one process; p50 =
median of the round medians, spread = their interquartile band). The goal checked (issue 15): the INT8
student >= 1.3x faster than the FP32 teacher at >= 97% of its accuracy.

    .venv/bin/python benchmarks/vit_digits.py            # full run (about 2-3 minutes on 2 shared cores)
    .venv/bin/python benchmarks/vit_digits.py --quick    # smoke run: few epochs, short timings

Writes benchmarks/results/vit_digits.json (vit_digits.quick.json with --quick); the pipeline run goes to
runs/vit-digits (runs/vit-digits-quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # `vit_digits:teacher_factory` must import for the checkpoint

from edgekd.bench import ROUNDS, clearly_faster, predict, time_interleaved  # noqa: E402
from edgekd.host import detect_host, isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402
from edgekd.models import ViT  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = "x86-cpu-onnxruntime"
FACTORY = "vit_digits:teacher_factory"
GOAL_SPEEDUP = 1.3
GOAL_RETENTION = 0.97
CALIBRATION = 256
VIT = {"dim": 64, "heads": 4, "layers": 4, "ffn": 256, "patch": 4, "size": 16, "classes": 10}
SETTINGS = {  # epochs and timing, sized for 2 shared CPU cores
    "full": {"teacher_epochs": 60, "distill_epochs": 30, "qat_epochs": 5, "timed_s_per_artifact": 2.0},
    "quick": {"teacher_epochs": 8, "distill_epochs": 2, "qat_epochs": 1, "timed_s_per_artifact": 0.5},
}
ROWS = {  # key -> label, in table order
    "teacher-fp32": "teacher FP32",
    "teacher-int8-ort": "teacher INT8, ORT quantize_static",
    "student-kd-fp32": "edgekd student FP32 (KD)",
    "student-kd-qat-int8": "edgekd student INT8 (QAT+KD)",
}
EXTRA = {"teacher-int8-ptq": "(extra) teacher INT8, edgekd PTQ, every layer INT8"}  # the pipeline's own ablation row


def teacher_factory(**kwargs) -> nn.Module:
    """The benchmark's ViT (VIT's sizes unless overridden): what the teacher checkpoint names."""
    return ViT(**{**VIT, **kwargs})


def log(message: str) -> None:
    print(message, flush=True)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracy(path: Path, data) -> float:
    logits = predict(model=path, inputs=data.x_test)
    return float((np.asarray(logits).argmax(-1) == data.y_test).mean())


def train_teacher(data, path: Path, *, epochs: int, seed: int) -> dict:
    from edgekd.checkpoint import save_checkpoint
    from edgekd.distill import DistillConfig, distill, evaluate
    from edgekd.models import ModelRef

    torch.manual_seed(seed)
    model = teacher_factory()
    config = DistillConfig(kd=False, epochs=epochs, lr=2e-3, warmup_epochs=1, grad_clip=1.0, weight_decay=0.05,
                           patience=None, seed=seed)
    started = time.perf_counter()
    model = distill(student=model, data=data, config=config, progress=False).model.eval()
    seconds = time.perf_counter() - started
    test_accuracy = evaluate(model, data.x_test, data.y_test)["accuracy"]
    log(f"  teacher trained in {seconds:.0f} s ({epochs} epochs), test accuracy {test_accuracy:.4f}, "
        f"{params(model):,} params")
    save_checkpoint(path, model, ref=ModelRef(FACTORY, dict(VIT)),
                    meta={"trained_on": "digits16", "epochs": epochs, "seed": seed, "test_accuracy": test_accuracy})
    return {"epochs": epochs, "lr": config.lr, "seconds": round(seconds, 1), "test_accuracy_torch": test_accuracy,
            "checkpoint": str(path)}


def compress_run(teacher: Path, out: Path, s: dict, seed: int):
    from edgekd.pipeline import compress
    from edgekd.recipe import Recipe

    recipe = Recipe(teacher=str(teacher), student="prune:0.5", data="digits16", targets=[TARGET], formats=["onnx"],
                    out=str(out), seed=seed, trust_factories=[FACTORY],
                    distill={"epochs": s["distill_epochs"], "patience": None},
                    quant={"epochs": s["qat_epochs"]},
                    bench={"warmup": 5, "time_budget_s": 0.5, "min_iterations": 20, "ablation_time_budget_s": 1.0})
    started = time.perf_counter()
    result = compress(recipe=recipe)
    return recipe, result.report, time.perf_counter() - started


def calibration_feeds(data, input_name: str, samples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    index = rng.choice(len(data.x_train), size=min(samples, len(data.x_train)), replace=False)
    return [{input_name: data.x_train[i:i + 1].astype(np.float32)} for i in index]


def int8_kernels(onnx_path: Path) -> dict | None:
    """The pipeline export's own integer-kernel evidence (the model.export.json next to its ONNX), if any."""
    evidence = onnx_path.with_suffix(".export.json")
    if not evidence.is_file():
        return None
    kernels = json.loads(evidence.read_text()).get("int8_kernels", {})
    return kernels.get("onnxruntime") or kernels.get("onnx")


def executed_kernels(onnx_path: Path) -> dict:
    """Compute ops of the graph ONNX Runtime actually runs, and which of them run integer kernels (the export
    gate's count, applied alike to every row, ORT's own quantize_static output included)."""
    from edgekd.runtimes import cpu_session, int8_counts

    session = cpu_session(onnx_path, instrumented=True)
    try:
        int8, total = int8_counts(session.compute_ops())
    finally:
        session.close()
    return {"kernels": int8, "compute_layers": total}


def kernel_cell(counts: dict | None) -> str:
    if not counts:
        return "not counted"
    return f"{sum(counts['kernels'].values())} / {sum(counts['compute_layers'].values())}"


def verdict(goal: dict) -> str:
    if not goal["met"]:
        return "NOT met"
    if not goal["met_with_int8_executing"]:
        return "met by the figures, but not by INT8: the INT8 student runs no integer kernels (it is float)"
    return "met"


def markdown_table(payload: dict) -> str:
    lines = ["| variant | params | test accuracy | retention | ORT p50 ms (round IQR) | speed-up vs teacher FP32 "
             "| ORT integer kernels / compute layers |", "|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        low, high = row["latency"]["spread"]
        lines.append(f"| {row['label']} | {row['params']:,} | {row['accuracy']:.4f} | {row['retention']:.3f} | "
                     f"{row['latency']['p50']:.3f} ({low:.3f}-{high:.3f}) | {row['speedup_vs_teacher']:.2f}x | "
                     f"{kernel_cell(row['int8_kernels'])} |")
    g = payload["goal"]
    kernels = payload["int8_student"]["int8_kernels"] or {}
    layers = payload["int8_student"]["int8_layers"] or {}
    lines += ["", f"Goal (INT8 student >= {GOAL_SPEEDUP}x the FP32 teacher's speed at >= {GOAL_RETENTION:.0%} "
                  f"accuracy retention): **{verdict(g)}** (speed-up {g['speedup']:.2f}x, "
                  f"retention {g['retention']:.3f}; clearly faster by the harness rule: "
                  f"{'yes' if g['clearly_faster'] else 'no'}). Deployed on {TARGET}: "
                  f"`{payload['int8_student']['deployed_variant']}`. INT8 student vs its FP32 self here: "
                  f"{payload['int8_student']['versus_fp32_student']['int8_p50_over_fp32_p50']:.2f}x the p50, "
                  f"{payload['int8_student']['versus_fp32_student']['verdict']}. INT8 student: "
                  f"{layers.get('int8', '?')} of {layers.get('total', '?')} compute layers quantized (report.json); its export "
                  f"gate counted integer kernels {kernels.get('kernels', {})} for {kernels.get('expected', '?')} "
                  f"quantized layers; ONNX Runtime ran {g['int8_kernels_executed']} of its compute ops on integer "
                  "kernels.",
              f"Host: {payload['host']}; {payload['rounds']} interleaved rounds, "
              f"{payload['settings']['timed_s_per_artifact']:g} s of timed runs per artifact; "
              f"wall time {payload['wall_s']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few epochs, short timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch training threads (default 1: steadier on "
                                                                  "a shared 2-core host)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/vit_digits[.quick].json)")
    parser.add_argument("--runs-dir", type=Path, help="pipeline run directory (default runs/vit-digits[-quick])")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    out = args.out or RESULTS / ("vit_digits.quick.json" if args.quick else "vit_digits.json")
    run_dir = (args.runs_dir or ROOT / "runs" / ("vit-digits-quick" if args.quick else "vit-digits")).resolve()
    torch.set_num_threads(args.threads)

    from edgekd.data import load_data
    from edgekd.targets import load_target
    from peers import ort_static_int8

    started = time.time()
    load_before = os.getloadavg()[0]
    data = load_data("digits16")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    teacher_ckpt = run_dir.parent / f"{run_dir.name}-teacher.pt"
    log(f"[1/4] training the ViT teacher ({VIT}) ...")
    teacher_info = train_teacher(data, teacher_ckpt, epochs=s["teacher_epochs"], seed=args.seed)

    log(f"[2/4] edgekd compress --student prune:0.5 -> {run_dir}")
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # a fresh run: this benchmark never resumes
    recipe, report, compress_s = compress_run(teacher_ckpt, run_dir, s, args.seed)
    ablation = {e["variant"]: e for e in report["ablation"]}
    files = {key: run_dir / ablation[key]["artifact"] for key in ("teacher-fp32", "student-kd-fp32",
                                                                     "student-kd-qat-int8", "teacher-int8-ptq")}
    deployed = next(t for t in report["targets"] if t["name"] == TARGET)

    log(f"[3/4] ORT quantize_static of {files['teacher-fp32']} ({CALIBRATION} calibration samples)")
    import onnx

    input_name = onnx.load(str(files["teacher-fp32"])).graph.input[0].name
    target = load_target(TARGET)
    ort_path = run_dir.parent / f"{run_dir.name}-ort-static-int8" / "model.onnx"
    ort_settings = ort_static_int8(files["teacher-fp32"], ort_path, calibration_feeds(data, input_name, CALIBRATION,
                                                                                       args.seed),
                                   activation_dtype=target.quantization.activations.dtype,
                                   reduce_range=False)  # this profile's 8-bit weights; see peers.py for AVX2 hosts
    files = {"teacher-fp32": files["teacher-fp32"], "teacher-int8-ort": ort_path,
             "student-kd-fp32": files["student-kd-fp32"], "student-kd-qat-int8": files["student-kd-qat-int8"],
             "teacher-int8-ptq": files["teacher-int8-ptq"]}

    log(f"[4/4] scoring, then {ROUNDS} interleaved rounds over the {len(files)} artifacts on {TARGET}")
    acc = {key: accuracy(path, data) for key, path in files.items()}
    timed = time_interleaved(models=files, target=target, inputs=data.x_test[:1], rounds=ROUNDS,
                             round_time_s=s["timed_s_per_artifact"] / ROUNDS)
    n_params = {"teacher-fp32": ablation["teacher-fp32"]["params"], "teacher-int8-ort": ablation["teacher-fp32"]["params"],
                "student-kd-fp32": ablation["student-kd-fp32"]["params"],
                "student-kd-qat-int8": ablation["student-kd-qat-int8"]["params"],
                "teacher-int8-ptq": ablation["teacher-int8-ptq"]["params"]}
    teacher_t = timed["teacher-fp32"]
    rows = [{"key": key, "label": label, "artifact": str(files[key]), "params": n_params[key], "accuracy": acc[key],
             "retention": acc[key] / acc["teacher-fp32"], "latency": timed[key].as_dict(),
             "speedup_vs_teacher": teacher_t.p50 / timed[key].p50,
             "clearly_faster_than_teacher": clearly_faster(timed[key], teacher_t),
             "int8_kernels": executed_kernels(files[key]),
             "export_int8_kernels": int8_kernels(files[key]) if key in ablation else None}
            for key, label in {**ROWS, **EXTRA}.items()]
    int8_row = next(row for row in rows if row["key"] == "student-kd-qat-int8")
    int8_ran = sum(int8_row["int8_kernels"]["kernels"].values())
    fp32_t, int8_t = timed["student-kd-fp32"], timed["student-kd-qat-int8"]
    versus_fp32 = {"int8_p50_over_fp32_p50": int8_t.p50 / fp32_t.p50,
                   "verdict": "INT8 clearly faster" if clearly_faster(int8_t, fp32_t) else
                   "INT8 clearly slower" if clearly_faster(fp32_t, int8_t) else "within noise"}
    goal = {"speedup": int8_row["speedup_vs_teacher"], "retention": int8_row["retention"],
            "int8_kernels_executed": int8_ran,
            "met_with_int8_executing": int8_ran > 0 and int8_row["speedup_vs_teacher"] >= GOAL_SPEEDUP
            and int8_row["retention"] >= GOAL_RETENTION,
            "clearly_faster": int8_row["clearly_faster_than_teacher"],
            "met": int8_row["speedup_vs_teacher"] >= GOAL_SPEEDUP and int8_row["retention"] >= GOAL_RETENTION,
            "rule": f"INT8 student p50 <= teacher FP32 p50 / {GOAL_SPEEDUP} and accuracy >= {GOAL_RETENTION} x teacher's"}
    payload = {
        "benchmark": "vit_digits", "quick": args.quick, "trained": "by the script",
        "command": "python benchmarks/vit_digits.py" + (" --quick" if args.quick else ""),
        "model": {"factory": FACTORY, "kwargs": VIT, "layers": "Conv2d patch embed, cls token, pos embed, "
                  "nn.TransformerEncoder (post-norm), LayerNorm, Linear head"},
        "data": "digits16", "test_samples": int(len(data.y_test)), "target": TARGET,
        "settings": {**s, "seed": args.seed, "torch_threads": args.threads, "calibration_samples": CALIBRATION},
        "teacher_training": teacher_info, "compress": {"recipe": recipe.model_dump(), "seconds": round(compress_s, 1),
                                                       "run_dir": str(run_dir)},
        "ort_static": ort_settings,
        "rounds": ROUNDS, "rows": rows, "goal": goal,
        "int8_student": {"deployed_variant": deployed["variant"], "deployed_note": deployed.get("note"),
                         "versus_fp32_student": versus_fp32,
                         "int8_layers": ablation["student-kd-qat-int8"].get("int8_layers"),
                         "precision": ablation["student-kd-qat-int8"].get("precision"),
                         "int8_kernels": int8_kernels(files["student-kd-qat-int8"]),
                         "float_layers": (report.get("quantization") or {}).get("float_layers"),
                         "prune": report.get("prune")},
        "pipeline_report": {"speedup_vs_teacher": report.get("speedup_vs_teacher"),
                            "speedup_within_noise": report.get("speedup_within_noise"),
                            "retention": report.get("retention"), "notes": report.get("notes"),
                            "ablation": report["ablation"]},
        "host": isa_summary(), "host_detail": detect_host().as_dict(),
        "versions": {"python": platform.python_version(),
                     **{p: version(p) for p in ("edgekd", "torch", "onnxruntime", "onnx")}},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_s": round(time.time() - started, 1),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("\n" + markdown_table(payload))
    write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
