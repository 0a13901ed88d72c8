"""`edgekd compress`: the whole job, in the order the mission states it.

    1. prune      make the student (given, `prune:R` from the teacher, `layers:N`, or `auto`: the most
                  capable ladder candidate that fits every target's SLOs, measured there; a target
                  whose budget fits a larger one gets that one too, trained alike, and deploys it)
    2. distill    KD into the FP32 student; the same loop without KD is the baseline
    3. quantize   QAT+KD to INT8 as the target's kernels want; PTQ of the teacher as a baseline
    4. export     ONNX (QDQ) and OpenVINO IR for every variant (+ FP16 for fp16 targets), parity-gated;
                  the run root holds what the first target deploys
    5. benchmark  every variant as an exported artifact on every available target; each target's
                  full benchmark is of what it deploys (INT8, FP16 or FP32 student by its precision)
    6. report     report.json/.md/.html with plots, and manifest.json

Each step is a call into its stage's public API; `RunState` makes every finished step durable
so `--resume` picks up where an interrupted run stopped. A family whose models generate text (causal
LMs) runs the same six steps in `compress_generative`, through edgekd.steps.generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from edgekd import steps as S
from edgekd.checkpoint import load_model, model_sha256
from edgekd.data import load_data
from edgekd.families import family_for
from edgekd.recipe import Recipe, example_recipe
from edgekd.runstate import RunState, check_run_folder
from edgekd.targets import load_target


@dataclass
class CompressResult:
    out: Path
    report: dict
    exit_code: int  # 0 all measured SLOs met; 1 an SLO failed


def compress(*, recipe: Recipe | None = None, resume: bool = False, console: Console | None = None) -> CompressResult:
    """Run the pipeline described by `recipe` (default: the embedded example) into `recipe.out`."""
    recipe = recipe or example_recipe()
    console = console or Console(stderr=True)
    stages = S.StageLog(console, total=6)
    check_run_folder(Path(recipe.out))  # before the data load and the teacher (which may train)

    data = load_data(recipe.data, labeled_fraction=recipe.labeled_fraction)  # cheap checks before the teacher
    teacher = load_model(recipe.teacher, trusted_factories=recipe.trusted_factories(), seed=recipe.seed)
    family = family_for(model=teacher.model, data=data)  # the one place the kind of model is decided
    targets = recipe.budgeted([load_target(name) for name in recipe.targets])
    plan = S.plan_targets(targets)
    if recipe.student == S.AUTO:
        S.check_auto(plan)  # before the run folder is touched
    out = Path(recipe.out)
    run = RunState(out, resume=resume, trusted_factories=recipe.trusted_factories(), fingerprint={
        "recipe": S.recipe_hash(recipe), "teacher": model_sha256(teacher.model), "data": data.sha256,
        "targets": S.targets_hash(targets)})
    ctx = S.Context(recipe=recipe, data=data, teacher=teacher, family=family, plan=plan, run=run, console=console,
                    resume=resume)
    if family.generates:
        return compress_generative(ctx, stages)

    with stages.step("prune", "making the student"):
        student = S.make_student(ctx)
    with stages.step("distill", "KD into the FP32 student, and the no-KD baseline"):
        no_kd = S.train_student(ctx, student, kd=False)
        kd = S.train_student(ctx, student, kd=True)
        own_kd = S.train_own_students(ctx)  # auto: larger students for targets whose budget fits one
    with stages.step("quantize", f"QAT+KD to {plan.describe()}; PTQ of the teacher"):
        int8 = {name: S.quantize_student(ctx, kd, variant=name) for name in plan.int8_variants()}
        own = S.quantize_own_students(ctx, own_kd)
        teacher_int8 = S.quantize_teacher(ctx)
    with stages.step("export", f"ONNX (QDQ{', FP16' if plan.wants_fp16 else ''}) + OpenVINO IR, parity-gated"):
        variants = {S.TEACHER_FP32: S.as_variant(teacher), S.TEACHER_INT8: teacher_int8,
                    S.NO_KD: no_kd, S.KD_FP32: kd, **int8, **own}  # one QAT student per INT8 scheme (and student)
        if plan.wants_fp16:
            variants[S.FP16_VARIANT] = kd  # the KD student again, stored in FP16
        artifacts = S.export_variants(ctx, variants)
    with stages.step("benchmark", "every variant on every available target"):
        measured = S.benchmark_variants(ctx, artifacts)
    with stages.step("report", "report.json/.md/.html, plots, manifest"):
        report = S.write_report(ctx, artifacts, measured, started=stages.started)
    return CompressResult(out=out, report=report, exit_code=0 if S.all_slos_met(report) else 1)


def compress_generative(ctx: S.Context, stages: S.StageLog) -> CompressResult:
    """The same six steps for models that generate text (causal LMs): edgekd.steps.generation."""
    from edgekd.steps import generation as G

    data = G.token_data(ctx)
    with stages.step("prune", "making the student"):
        student = G.make_student(ctx)
    with stages.step("distill", "token-level KD on the teacher's cached top-k logits, and the no-KD baseline"):
        topk = G.teacher_topk(ctx, data)
        no_kd = G.train_student(ctx, student, data, kd=False)
        kd = G.train_student(ctx, student, data, kd=True, topk=topk, generations=G.teacher_generations(ctx))
    with stages.step("quantize", f"weight-only INT{ctx.recipe.quant.weight_bits} with KD; the teacher's weights rounded"):
        int_student = G.quantize_student(ctx, kd, data, topk)
        teacher_int = G.quantize_teacher(ctx)
    with stages.step("export", "ONNX decoder with a KV cache + OpenVINO IR, gated on greedy tokens"):
        variants = {S.TEACHER_FP32: G.LMVariant(ctx.teacher.model), S.TEACHER_INT8: teacher_int, S.NO_KD: no_kd,
                    S.KD_FP32: kd, S.DEPLOYABLE: int_student}
        artifacts = G.export_variants(ctx, variants, G.prompts(data, count=ctx.recipe.lm.parity_prompts, length=16))
    with stages.step("benchmark", "perplexity and agreement of every artifact; TTFT, tokens/s, speculative decoding"):
        scores = G.score_variants(ctx, artifacts, data)
        measured = G.benchmark_targets(ctx, artifacts, data, scores)
    with stages.step("report", "report.json/.md/.html, manifest"):
        report = G.write_report(ctx, artifacts, scores, measured, started=stages.started)
    return CompressResult(out=ctx.run.out, report=report, exit_code=0 if S.all_slos_met(report) else 1)
