"""Step 5: every exported variant scored on the same held-out data and timed on every available target,
and each target's full benchmark of what it deploys."""

from __future__ import annotations

from edgekd.steps.context import Artifact, Context
from edgekd.report.schema import TEACHER_FP32


def benchmark_variants(ctx: Context, artifacts: dict[str, Artifact]) -> dict:
    """Metric of every exported variant on the same held-out data, its latency on every target,
    and the full benchmark on every target (absent ones: not-measured) of what that target deploys:
    the INT8 student, or for an fp16 / fp32 target the KD student in that precision."""
    from edgekd.bench import benchmark, measure_latency, predict

    b = ctx.recipe.bench
    inputs, sample = ctx.family.runtime_inputs()
    predictions = {name: predict(model=a.onnx, inputs=inputs) for name, a in artifacts.items()}
    metrics = {name: ctx.family.metric(pred, predictions[TEACHER_FP32]) for name, pred in predictions.items()}
    latency = {name: {} for name in artifacts}
    for target in ctx.plan.available:
        for name, artifact in artifacts.items():
            ctx.console.print(f"      timing {name} on {target.name}")
            latency[name][target.name] = measure_latency(model=artifact.for_target(target), target=target,
                                                         inputs=sample, time_budget_s=b.ablation_time_budget_s)
    def retention(name: str) -> float:
        return metrics[name]["value"] / metrics[TEACHER_FP32]["value"]

    full = []
    for target in ctx.plan.targets:
        deployed = artifacts[ctx.plan.deployed_variant(target)]
        ctx.console.print(f"      full benchmark of {deployed.variant} on {target.name}")
        entry = benchmark(model=deployed.for_target(target), target=target, inputs=sample, warmup=b.warmup,
                          min_iterations=b.min_iterations, time_budget_s=b.time_budget_s,
                          metric_retention=retention(deployed.variant)).to_dict()
        full.append({**entry, "variant": deployed.variant,
                     "artifact": deployed.for_target(target).relative_to(ctx.run.out).as_posix()})
    return {"predictions": predictions, "metrics": metrics, "latency": latency, "targets": full,
            "retention": retention(ctx.plan.primary)}
