"""Steps 1-3: make the student, distill it (and the no-KD baseline), quantize it (QAT+KD) and the teacher (PTQ).

Each is one call into its stage's API with the model family's pieces (student maker, KD recipe,
collate); `stored` keeps the result in the run directory so --resume skips it.
"""

from __future__ import annotations

import copy

from torch import nn

from edgekd.steps.budget import AUTO, choose_student
from edgekd.student_spec import parse_student
from edgekd.steps.context import Context, Variant, stored
from edgekd.report.schema import DEPLOYABLE, KD_FP32, NO_KD, TEACHER_INT8, own_variant
from edgekd.targets import Target


# ---- 1. prune ---------------------------------------------------------------------------------

def make_student(ctx: Context, own: str | None = None) -> Variant:
    """The student the recipe names: `prune:R` / `layers:N` of the teacher (the family makes it), the one
    `auto` picks from latency measured on the targets, or a given checkpoint / factory, built under the
    run's seed; with `own`, that larger student `auto` picked for some targets."""
    spec = own or ctx.recipe.student
    ctx.family.check_model_takes_data(f"teacher '{ctx.recipe.teacher}'", f"--data '{ctx.recipe.data}'")
    if spec == AUTO:
        spec = choose_student(ctx)

    def build() -> Variant:
        kind = spec.partition(":")[0]
        if parse_student(spec) is not None:  # made from the teacher (the recipe validated the spec)
            result = ctx.family.make_student(spec, channel_multiple=ctx.plan.channel_multiple,
                                             prune_settings=ctx.recipe.prune, seed=ctx.recipe.seed)
            return Variant(result.model, ctx.teacher.ref, ctx.teacher.transforms + [result.transform],
                           {kind: result.report})
        from edgekd.checkpoint import load_model

        loaded = load_model(spec, trusted_factories=ctx.recipe.trusted_factories(), seed=ctx.recipe.seed)
        return Variant(loaded.model, loaded.ref, list(loaded.transforms), {"given": spec})

    return stored(ctx, _stage("student", own), build)


def _stage(name: str, own: str | None) -> str:
    """The run-state stage (and checkpoint folder) of `name`, made of the run's own student or of `own`."""
    return name if own is None else own_variant(name, own)


# ---- 2. distill -------------------------------------------------------------------------------

def distill_config(ctx: Context, *, kd: bool, student: nn.Module | None = None):
    """The recipe's distill settings, in the family's KD recipe (for text: embedding + hidden +
    attention terms on top of them)."""
    settings = {"seed": ctx.recipe.seed, **ctx.recipe.distill, "kd": kd,
                "response": ctx.data.task == "classification" and ctx.recipe.distill.get("response", True)}
    if not kd:
        settings["losses"] = []
    return ctx.family.distill_config(settings, source="recipe: distill", student=student)


def train_student(ctx: Context, student: Variant, *, kd: bool, own: str | None = None) -> Variant:
    """KD training, or the no-KD baseline: trained on labels, or, where the family has no training
    signal without a teacher (unlabeled text), the student as made. `own`: the larger student it is."""
    from edgekd.distill import distill

    stage = _stage(KD_FP32 if kd else NO_KD, own)

    def build() -> Variant:
        if not kd and not ctx.family.trains_without_teacher():
            return Variant(copy.deepcopy(student.model), student.ref, student.transforms,
                           {"untrained": "unlabeled text: no training signal without the teacher"})
        model = copy.deepcopy(student.model)
        result = distill(student=model, teacher=ctx.teacher.model if kd else None, data=ctx.data,
                         config=distill_config(ctx, kd=kd, student=model), out_dir=ctx.run.checkpoint_dir(stage),
                         resume=ctx.resume, progress=True)
        return Variant(result.model, student.ref, student.transforms,
                       {"history": result.history, "best_epoch": result.best_epoch, "metrics": result.metrics})

    return stored(ctx, stage, build)


# ---- 3. quantize ------------------------------------------------------------------------------

def _quant_config(ctx: Context, *, mode: str, group: list[Target]):
    """The group's scheme, with the fewest weight bits any of its targets needs (7 where an x86 CPU
    without VNNI may saturate: such a model runs correctly on the group's 8-bit targets too)."""
    from edgekd.quant import QuantConfig, weight_bits_for_target

    q = ctx.recipe.quant
    settings = dict(mode=mode, observer=q.observer, warmup_epochs=q.warmup_epochs,
                    calibration_samples=q.calibration_samples)
    if not group:
        return QuantConfig(**settings)
    bits, why = min(weight_bits_for_target(t) for t in group)
    return QuantConfig.for_target(group[0], weight_bits=bits, weight_bits_reason=why, **settings)


def train_own_students(ctx: Context) -> dict[str, Variant]:
    """The larger students `auto` picked for some targets (`TargetPlan.own_students`), made and KD-trained
    like the run's own: spec -> its FP32 KD student."""
    return {spec: train_student(ctx, make_student(ctx, own=spec), kd=True, own=spec)
            for spec in ctx.plan.own_deployables()}


def quantize_own_students(ctx: Context, own_kd: dict[str, Variant]) -> dict[str, Variant]:
    """Every variant made of those students that a target may deploy: QAT+KD in each INT8 scheme its
    targets want, and the KD student itself (FP32, or stored in FP16 for an fp16 target)."""
    made = {}
    for spec, kinds in ctx.plan.own_deployables().items():
        for kind in sorted(kinds):
            int8 = kind in ctx.plan.int8_variants()
            made[own_variant(kind, spec)] = (quantize_student(ctx, own_kd[spec], variant=kind, own=spec) if int8
                                             else own_kd[spec])
    return made


def quantize_student(ctx: Context, student: Variant, *, variant: str = DEPLOYABLE, own: str | None = None) -> Variant:
    """QAT+KD: the FP32 KD student teaches its own fake-quant copy, in the scheme `variant`'s targets
    want (`TargetPlan.int8_variants`); layer kinds that INT8 makes slower on a measurable one stay float."""
    from edgekd.quant import checkpoint_transform, qat_distill_config
    from edgekd.tune import quantize

    q = ctx.recipe.quant
    group = ctx.plan.int8_variants()[variant]
    timed_on = next((t for t in group if t in ctx.plan.available), None)
    stage = _stage(variant, own)

    def build() -> Variant:
        kd = distill_config(ctx, kd=True)
        config = _quant_config(ctx, mode="qat", group=group)
        config.distill = ctx.family.qat_distill_config(
            qat_distill_config(epochs=q.epochs, max_steps=q.max_steps, lr=q.lr, seed=kd.seed, batch_size=kd.batch_size,
                               temperature=kd.temperature, alpha=kd.alpha, response=kd.response, collate=kd.collate),
            student=student.model)
        config.latency_aware = q.latency_aware and ctx.family.times_layer_choices() and timed_on is not None
        result = quantize(model=student.model, data=ctx.data, config=config, teacher=student.model,
                          target=timed_on if config.latency_aware else None,
                          example_inputs=ctx.family.example_input(), out_dir=ctx.run.checkpoint_dir(stage),
                          resume=ctx.resume)
        report = result.report.as_dict()
        choice = result.layer_choice
        report["latency_choice"] = choice.as_dict() if choice else None
        transforms = student.transforms + ([] if result.kept_float else [checkpoint_transform(result.model)])
        report["targets"] = [t.name for t in group]
        return Variant(result.model, student.ref, transforms, {"history": result.history, "quantization": report})

    return stored(ctx, stage, build)


def quantize_teacher(ctx: Context) -> Variant:
    """Post-training quantization of the teacher, the baseline a team would try first; SmoothQuant-ed first
    where the family asks (transformers, as NNCF's transformer preset does: edgekd.quant.prepare.smooth)."""
    from edgekd.quant import checkpoint_transform, qat_distill_config, quantize

    def build() -> Variant:
        config = _quant_config(ctx, mode="ptq", group=ctx.plan.int8_variants()[DEPLOYABLE])
        config.latency_aware = False
        config.smooth_alpha = ctx.family.ptq_smooth_alpha()
        config.distill = qat_distill_config(collate=ctx.family.collate())  # calibration batches collated as in training
        result = quantize(model=ctx.teacher.model, data=ctx.data, config=config)
        return Variant(result.model, ctx.teacher.ref, ctx.teacher.transforms + [checkpoint_transform(result.model)],
                       {"quantization": result.report.as_dict()})

    return stored(ctx, TEACHER_INT8, build)
