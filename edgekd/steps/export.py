"""Step 4: every variant exported the same way (ONNX, QDQ where quantized, FP16 for fp16 targets, and
OpenVINO IR), each behind the export gate; and the run root's copy of what the first target deploys.

The gate stops the run (GateFailed, exit 1, nothing shipped) only for what the run cannot do without: a
student a target may deploy, and the FP32 teacher's ONNX file, the reference every row is scored against.
A baseline (a comparison row, never deployed) loses just the formats that fail: its row says which check
failed and what it therefore lacks (`rejected_formats`, `runs_on`)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from edgekd.errors import BadInput
from edgekd.io import atomic_path
from edgekd.report.schema import FP16_VARIANT, TEACHER_FP32, VARIANTS, base_variant
from edgekd.steps.context import Artifact, Context, Variant
from edgekd.targets import Target


def export_variants(ctx: Context, variants: dict[str, Variant]) -> dict[str, Artifact]:
    """Every variant exported the same way to variants/<name>/, each student a target may deploy with its
    family's extras (text: the Optimum folder, hf/). The run root gets its copy once step 5 has settled what
    the first target deploys (`publish_root`)."""
    from edgekd.export import export

    artifacts = {}
    for name, variant in variants.items():
        out_dir = _variant_dir(ctx, name)
        precision = "fp16" if base_variant(name) == FP16_VARIANT else "fp32"

        def run_export(variant=variant, out_dir=out_dir, name=name, precision=precision) -> dict:
            result = export(model=ctx.family.export_view(variant.model), out_dir=out_dir,
                            formats=_formats(ctx, name), precision=precision, required=_required(ctx, name),
                            **ctx.family.export_inputs(static_shapes=ctx.plan.static_shapes))
            if name in ctx.plan.may_deploy:
                ctx.family.write_deployable_extras(out_dir=out_dir, model=variant.model, export_result=result)
            for fmt, problems in result.rejected.items():
                ctx.console.print(f"      {name}: {fmt} rejected by the export gate ({'; '.join(problems)}); a "
                                  "comparison row only, the run goes on", markup=False)
            return {"onnx": _in_run(ctx, result.onnx), "openvino": _in_run(ctx, result.openvino_xml),
                    "parity": result.parity, "int8_executed": result.int8_executed, "precision": result.precision,
                    "rejected": result.rejected}

        done = ctx.run.value(f"export:{name}", run_export)
        onnx, openvino = _recorded(ctx, name, done)
        artifacts[name] = Artifact(name, onnx, openvino, done["parity"], done["int8_executed"], variant.model,
                                   {**variant.info, _REJECTED: done.get("rejected", {})},
                                   done.get("precision", "fp32"))  # runs exported before FP16 existed
    return artifacts


_REJECTED = "rejected"  # Artifact.info key: format -> the export checks it failed (a baseline's, withheld)


def rejected_formats(artifact: Artifact) -> dict[str, list[str]]:
    """Format -> the export checks it failed, for a baseline the gate withheld that format of (else empty)."""
    return artifact.info.get(_REJECTED, {})


def runs_on(artifact: Artifact, target: Target) -> bool:
    """Whether `target` has this artifact to run: not where the gate rejected the baseline's ONNX file, nor,
    on an OpenVINO target, its IR (timing the ONNX file there instead would time the model the gate refused)."""
    return artifact.onnx is not None and not (target.runtime == "openvino" and "openvino" in rejected_formats(artifact))


def _required(ctx: Context, name: str) -> tuple[str, ...] | None:
    """The formats whose gate failure stops the run: all (None) of a student a target may deploy; the FP32
    teacher's ONNX file, which scores every row; none of another baseline, which its row reports instead."""
    if name in ctx.plan.may_deploy:
        return None
    return ("onnx",) if name == TEACHER_FP32 else ()


def _in_run(ctx: Context, path: Path | None) -> str | None:
    """A path as the run state records it: relative to the run folder, so a moved, copied or
    differently spelled run folder resumes from its own files."""
    return Path(path).resolve().relative_to(ctx.run.out.resolve()).as_posix() if path else None


def _recorded(ctx: Context, stage: str, done: object) -> tuple[Path | None, Path | None]:
    """The artifact paths a finished export stage recorded (no ONNX file only where the gate rejected a
    baseline's), checked: a tampered or foreign state.json never points the benchmark at a file outside this
    run (exit 2, not a crash)."""
    problem = None
    shaped = (isinstance(done, dict) and isinstance(done.get("parity"), dict)
              and isinstance(done.get("int8_executed"), dict) and isinstance(done.get("rejected", {}), dict))
    if not shaped or not (isinstance(done.get("onnx"), str) or (done.get("onnx") is None
                                                                and "onnx" in done.get("rejected", {}))):
        problem = "its record lacks the exported files or their checks"
    else:
        paths = [p for p in (done["onnx"], done.get("openvino")) if p]
        root = ctx.run.out.resolve()
        for text in paths:
            path = (root / text).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                problem = f"it names {text!r}, which is not a file of this run"
                break
    if problem:
        raise BadInput(f"{ctx.run.path}: cannot resume stage 'export:{stage}': {problem}; run without --resume "
                       "to start over")
    root = ctx.run.out
    return (root / done["onnx"]) if done["onnx"] else None, (root / done["openvino"]) if done.get("openvino") else None


def publish_root(ctx: Context, artifact: Artifact) -> Artifact:
    """Copy `artifact`'s folder (model.onnx, openvino/, the family's extras) into the run root, each file
    atomically, and return the artifact as found there. A copy, not the export itself: which student the
    first target deploys is only known once step 5 has timed the INT8 student against its FP32 self."""
    in_root = copy_to_root(ctx, artifact.variant)
    return dataclasses.replace(artifact, onnx=in_root(artifact.onnx), openvino=in_root(artifact.openvino))


def copy_to_root(ctx: Context, variant: str):
    """Copy variant `variant`'s folder into the run root, each file atomically; returns where a file of that
    folder now lies in the root (None stays None)."""
    source = _variant_dir(ctx, variant)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        with atomic_path(ctx.run.out / path.relative_to(source)) as tmp:
            shutil.copyfile(path, tmp)

    def in_root(path: Path | None) -> Path | None:
        return ctx.run.out / path.relative_to(source) if path else None

    return in_root


def _variant_dir(ctx: Context, name: str) -> Path:
    return ctx.run.out / "variants" / name


def _formats(ctx: Context, name: str) -> tuple[str, ...]:
    """The recipe's formats for the five ablation variants; a variant made for particular targets (FP16,
    another INT8 scheme) gets an OpenVINO IR only if one of them runs OpenVINO. (OpenVINO would run a
    QNN-style uint8-weight model in FP32, which its gate rightly refuses.)"""
    formats = tuple(ctx.recipe.formats)
    if name in VARIANTS:
        return formats
    served = [t for t in ctx.plan.targets if name == ctx.plan.deployed_variant(t)
              or (t.precision == "int8" and name == ctx.plan.fp32_self(t))]  # its FP32 fall-back is timed there
    if any(t.runtime == "openvino" for t in served):
        return formats
    return tuple(f for f in formats if f != "openvino") or ("onnx",)
