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
from edgekd.report.schema import DEPLOYABLE, FP16_VARIANT, NO_KD, TEACHER_FP32, VARIANTS
from edgekd.steps.train import distill_config


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _size_mb(artifact: Artifact) -> float:
    return artifact.onnx.stat().st_size / 2**20


def write_report(ctx: Context, artifacts: dict[str, Artifact], measured: dict, *, started: float) -> dict:
    from edgekd.report import audit, build_manifest, render_report, write_manifest

    out = ctx.run.out
    primary = ctx.plan.primary

    def row(name: str) -> dict:
        artifact = artifacts[name]
        return {
            "variant": name, "metric": measured["metrics"][name], "params": _params(artifact.model),
            "size_mb": round(_size_mb(artifact), 4),
            "precision": artifact.executed_precision,
            "artifact": str(artifact.onnx.relative_to(out)),
            "latency_p50_ms": {t: m["p50"] for t, m in measured["latency"][name].items()},
            "latency_p95_ms": {t: m["p95"] for t, m in measured["latency"][name].items()},
        }

    teacher_p50 = {t: m["p50"] for t, m in measured["latency"][TEACHER_FP32].items()}
    final_p50 = {t: m["p50"] for t, m in measured["latency"][primary].items()}
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
        "speedup_vs_teacher": {t: teacher_p50[t] / final_p50[t] for t in final_p50 if final_p50[t]},
        "training": {name: _curves(artifact.info["history"]) for name, artifact in artifacts.items()
                     if artifact.info.get("history") and name != FP16_VARIANT},  # FP16: the KD student's curves
        "audit": audit(y_true=ctx.data.y_test, teacher_pred=preds[TEACHER_FP32], student_pred=preds[primary])
        if ctx.data.task == "classification" else None,
        "quantization": {"scheme": ctx.plan.scheme.model_dump(), "scheme_source": ctx.plan.scheme_source,
                         **artifacts[DEPLOYABLE].info.get("quantization", {})},
        "prune": ctx.run.stages.get("student", {}).get("info", {}).get("prune"),
        "notes": ctx.plan.notes + _teacher_notes(measured["metrics"]),
        "host": detect_host().as_dict(),
    }).model_dump(mode="json")
    write_json(out / "report.json", report)
    manifest = build_manifest(
        run_dir=out,
        teacher={"ref": _checkable_ref(ctx.recipe.teacher), "sha256": model_sha256(ctx.teacher.model)},
        data={"name": ctx.data.name, "ref": _checkable_ref(ctx.recipe.data), "sha256": ctx.data.sha256,
              "provenance": ctx.data.provenance},
        recipe=ctx.recipe.model_dump(), hyperparameters=_hyperparameters(ctx), seed=ctx.recipe.seed)
    write_manifest(run_dir=out, manifest=manifest)
    render_report(run_dir=out)
    return report


def _teacher_notes(metrics: dict) -> list[str]:
    """A teacher that loses to the student trained without it was likely made for other data."""
    teacher, baseline = metrics[TEACHER_FP32], metrics[NO_KD]
    if baseline["value"] - teacher["value"] <= 0.05:
        return []
    return [f"the FP32 teacher scores {teacher['value']:.3f} {teacher['name']} on the held-out data, below the student "
            f"trained without it ({baseline['value']:.3f}): check that the teacher was trained for this data (input "
            "size, preprocessing, labels); distilling from it can only hurt"]


def _checkable_ref(ref: str) -> str:
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
