"""Step 4: every variant exported the same way (ONNX, QDQ where quantized, FP16 for fp16 targets, and
OpenVINO IR), each behind the export gate."""

from __future__ import annotations

from pathlib import Path

from edgekd.steps.context import Artifact, Context, Variant
from edgekd.report.schema import FP16_VARIANT, VARIANTS


def export_variants(ctx: Context, variants: dict[str, Variant]) -> dict[str, Artifact]:
    """Every variant exported the same way; the first target's deployable goes to the run root, the
    rest to variants/<name>/, each deployed student with its family's extras (text: the Optimum folder, hf/)."""
    from edgekd.export import export

    artifacts = {}
    for name, variant in variants.items():
        out_dir = ctx.run.out if name == ctx.plan.primary else ctx.run.out / "variants" / name
        precision = "fp16" if name == FP16_VARIANT else "fp32"

        def run_export(variant=variant, out_dir=out_dir, name=name, precision=precision) -> dict:
            result = export(model=ctx.family.export_view(variant.model), out_dir=out_dir,
                            formats=_formats(ctx, name), precision=precision,
                            **ctx.family.export_inputs(static_shapes=ctx.plan.static_shapes))
            if name in ctx.plan.deployed:
                ctx.family.write_deployable_extras(out_dir=out_dir, model=variant.model, export_result=result)
            return {"onnx": str(result.onnx), "openvino": str(result.openvino_xml) if result.openvino_xml else None,
                    "parity": result.parity, "int8_executed": result.int8_executed, "precision": result.precision}

        done = ctx.run.value(f"export:{name}", run_export)
        artifacts[name] = Artifact(name, Path(done["onnx"]), Path(done["openvino"]) if done["openvino"] else None,
                                   done["parity"], done["int8_executed"], variant.model, variant.info,
                                   done.get("precision", "fp32"))  # runs exported before FP16 existed
    return artifacts


def _formats(ctx: Context, name: str) -> tuple[str, ...]:
    """The recipe's formats for the five ablation variants; a variant made for particular targets (FP16,
    another INT8 scheme) gets an OpenVINO IR only if one of them runs OpenVINO. (OpenVINO would run a
    QNN-style uint8-weight model in FP32, which its gate rightly refuses.)"""
    formats = tuple(ctx.recipe.formats)
    if name in VARIANTS:
        return formats
    served = [t for t in ctx.plan.targets if ctx.plan.deployed_variant(t) == name]
    if any(t.runtime == "openvino" for t in served):
        return formats
    return tuple(f for f in formats if f != "openvino") or ("onnx",)
