"""Step 6: report.json (through the typed `Report` model that `edgekd report` reads back), report.md /
.html with plots, and manifest.json."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from torch import nn

from edgekd._version import __version__
from edgekd.checkpoint import model_sha256
from edgekd.host import detect_host
from edgekd.io import write_json
from edgekd.report.schema import Report
from edgekd.steps.context import Artifact, Context
from edgekd.steps.export import rejected_formats, runs_on
from edgekd.report.schema import DEPLOYABLE, FP16_VARIANT, NO_KD, TEACHER_FP32, VARIANTS, base_variant
from edgekd.steps.train import distill_config


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _size_mb(artifact: Artifact) -> float | None:
    return round(artifact.onnx.stat().st_size / 2**20, 4) if artifact.onnx else None


def write_report(ctx: Context, artifacts: dict[str, Artifact], measured: dict, *, started: float) -> dict:
    from edgekd.bench import differ
    from edgekd.report import audit, build_manifest, render_report, write_manifest

    out = ctx.run.out
    primary = ctx.plan.primary
    latency = measured["latency"]  # variant -> target -> edgekd.bench.RoundTimes

    def row(name: str) -> dict:
        artifact = artifacts[name]
        return {
            "variant": name, "metric": measured["metrics"][name], "params": _params(artifact.model),
            "size_mb": _size_mb(artifact),
            "precision": artifact.executed_precision,
            **_int8_layers(artifact),
            **_gate_failure(ctx, artifact),
            "artifact": str(artifact.onnx.relative_to(out)) if artifact.onnx else None,
            "latency_p50_ms": {t: m.p50 for t, m in latency[name].items()},
            "latency_p95_ms": {t: m.p95 for t, m in latency[name].items()},
            "latency_spread_ms": {t: list(m.spread) for t, m in latency[name].items()},  # quartiles of round p50s
        }

    # Each measured target's speed-up is of what it deploys, and says when the rounds cannot tell it from 1x.
    versus = {t.name: (latency[TEACHER_FP32][t.name], latency[ctx.plan.deployed_variant(t)][t.name])
              for t in ctx.plan.available if t.name in latency[TEACHER_FP32]}  # not where its IR was rejected
    preds = measured["predictions"]
    report = Report.model_validate({
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": ctx.data.task,
        "run": {"teacher": ctx.recipe.teacher, "student": ctx.recipe.student, "data": ctx.recipe.data,
                "targets": [t.name for t in ctx.plan.targets], "wall_time_s": round(time.time() - started, 1)},
        "ablation": [row(name) for name in VARIANTS],
        # students made for particular targets (FP16, another INT8 scheme), measured the same way
        "deployables": [row(name) for name in artifacts if name not in VARIANTS],
        "deployed": primary,  # the run root's model: what the first target deploys
        "targets": measured["targets"],
        "parity": artifacts[primary].parity,
        "int8_executed": artifacts[primary].int8_executed,
        "retention": measured["retention"],
        "speedup_vs_teacher": {t: teacher.p50 / student.p50 for t, (teacher, student) in versus.items() if student.p50},
        "speedup_within_noise": [t for t, (teacher, student) in versus.items() if not differ(teacher, student)],
        "training": {name: _curves(artifact.info["history"]) for name, artifact in artifacts.items()
                     if artifact.info.get("history") and base_variant(name) != FP16_VARIANT},  # FP16: the KD student's
        "audit": audit(y_true=ctx.data.y_test, teacher_pred=preds[TEACHER_FP32], student_pred=preds[primary])
        if ctx.data.task == "classification" else None,
        "quantization": {"scheme": ctx.plan.scheme.model_dump(), "scheme_source": ctx.plan.scheme_source,
                         **artifacts[DEPLOYABLE].info.get("quantization", {})},
        "prune": ctx.run.stages.get("student", {}).get("info", {}).get("prune"),
        "budget": ctx.run.stages.get("budget", {}).get("info"),
        "notes": ctx.plan.notes + _teacher_notes(measured["metrics"]) + _budget_notes(ctx, measured["targets"]),
        "host": detect_host().as_dict(),
    }).model_dump(mode="json")
    write_json(out / "report.json", report)
    manifest = build_manifest(
        run_dir=out,
        teacher={"ref": checkable_ref(ctx.recipe.teacher), "sha256": model_sha256(ctx.teacher.model)},
        data={"name": ctx.data.name, "ref": checkable_ref(ctx.recipe.data), "sha256": ctx.data.sha256,
              "provenance": ctx.data.provenance},
        recipe=ctx.recipe.model_dump(), hyperparameters=_hyperparameters(ctx), seed=ctx.recipe.seed)
    write_manifest(run_dir=out, manifest=manifest)
    render_report(run_dir=out)
    return report


def _int8_layers(artifact: Artifact) -> dict:
    """{"int8_layers": {"int8": k, "total": n}} for a quantized variant: how many of its compute layers its
    quantization report lists as INT8 (the rest stay float), so the report can say what really runs."""
    quantization = artifact.info.get("quantization")
    if not quantization:
        return {}
    int8 = len(quantization["quantized"])
    return {"int8_layers": {"int8": int8, "total": int8 + len(quantization["float_layers"])}}


def _gate_failure(ctx: Context, artifact: Artifact) -> dict:
    """A baseline's export-gate failure for its row: verdict "failed", and the reason: which format failed which
    check (the figure against the limit), and what the row therefore lacks."""
    rejected = rejected_formats(artifact)
    if not rejected:
        return {}
    untimed = [t.name for t in ctx.plan.available if not runs_on(artifact, t)]
    lacks = ("no artifact: not scored or timed" if artifact.onnx is None
             else f"not timed on {', '.join(untimed)}" if untimed else "")
    reason = "; ".join(f"{fmt} rejected by the export gate: {', '.join(why)}" for fmt, why in rejected.items())
    return {"verdict": "failed", "reason": reason + (f" ({lacks})" if lacks else ""), "rejected": rejected}


def _budget_notes(ctx: Context, targets: list[dict]) -> list[str]:
    """`student: auto` met the budget (latency, memory, size, speed-up) but the quality floor failed: the two
    conflict, said plainly."""
    budget = ctx.run.stages.get("budget", {}).get("info")
    if not budget:
        return []
    notes = []
    for entry in targets:
        failed = {c["key"]: c for c in entry["slo"]["checks"] if c.get("ok") is False}
        if set(failed) != {"min_metric_retention"}:
            continue
        check = failed["min_metric_retention"]
        profiled = next((t for t in budget["targets"] if t["target"] == entry["name"]), None)
        chosen = ctx.plan.own_students.get(entry["name"], budget["chosen"])
        params = {c["student"]: c["params"] for c in (profiled or {}).get("candidates", [])}
        larger = [c for c in (profiled or {}).get("candidates", [])
                  if c["student"] != "teacher" and c["params"] > params.get(chosen, 0)]
        next_up = min(larger, key=lambda c: c["params"]) if larger else None
        notes.append(f"{entry['name']}: the budget and the quality floor conflict: {chosen} meets the "
                     f"budget but keeps {check['value']:.3f} of the teacher's metric, under the floor {check['limit']}"
                     + (f"; the next larger candidate, {next_up['student']}, measured p95 {next_up['latency_p95_ms']:.3f} "
                        "ms" if next_up else "; it is the largest student the ladder holds"))
    return notes


def _teacher_notes(metrics: dict) -> list[str]:
    """A teacher that loses to the student trained without it was likely made for other data."""
    teacher, baseline = metrics[TEACHER_FP32], metrics[NO_KD]
    if baseline["value"] is None or baseline["value"] - teacher["value"] <= 0.05:  # None: its export was rejected
        return []
    return [f"the FP32 teacher scores {teacher['value']:.3f} {teacher['name']} on the held-out data, below the student "
            f"trained without it ({baseline['value']:.3f}): check that the teacher was trained for this data (input "
            "size, preprocessing, labels); distilling from it can only hurt"]


def checkable_ref(ref: str) -> str:
    """A file or folder reference made absolute, so `edgekd check` re-hashes it from any directory."""
    path = Path(ref)
    return str(path.resolve()) if path.exists() else ref


def _curves(history: list[dict]) -> list[dict]:
    """Distill's epoch records in the report's terms: train loss and the primary validation metric."""
    curves = []
    for record in history:
        val = record.get("val", {})
        curves.append({"epoch": record["epoch"], "train_loss": record.get("loss"),
                       "val_metric": next(iter(val.values()), None), **{f"val_{k}": v for k, v in val.items()},
                       "step_ms": record.get("step_ms")})
    return curves


def _hyperparameters(ctx: Context) -> dict:
    config = asdict(distill_config(ctx, kd=True))
    config.pop("collate", None)
    return {"distill": config, "quant": ctx.recipe.quant.model_dump(), "prune": ctx.recipe.prune.model_dump(),
            "channel_multiple": ctx.plan.channel_multiple, "scheme": ctx.plan.scheme.model_dump()}


def all_slos_met(report: dict) -> bool:
    return all(t["slo"]["verdict"] != "fail" for t in report["targets"])
