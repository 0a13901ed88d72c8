"""The steps of `edgekd compress`, each a thin call into one stage's public API.

`pipeline.py` reads as the six steps; this module holds what each step needs around its stage
call: which targets decide the INT8 scheme, how variants are named, stored and resumed, how the
exported artifacts are evaluated and timed on the same held-out data, and how report.json is
assembled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgekd import __version__
from edgekd.checkpoint import LoadedModel, model_sha256
from edgekd.data import Dataset
from edgekd.errors import BadInput
from edgekd.host import detect_host
from edgekd.io import write_json
from edgekd.recipe import Recipe
from edgekd.runstate import RunState
from edgekd.targets import QuantScheme, Target, availability

VARIANTS = ("teacher-fp32", "teacher-int8-ptq", "student-no-kd", "student-kd-fp32", "student-kd-qat-int8")
DEPLOYABLE = "student-kd-qat-int8"
FP16_VARIANT = "student-kd-fp16"  # the KD student stored in FP16, for targets whose precision is fp16


class StageLog:
    """Numbered, timed stage headers on the console (training stages add their own progress bars)."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.index = console, total, 0
        self.started = time.time()

    @contextmanager
    def step(self, name: str, what: str):
        self.index += 1
        self.console.print(f"[bold cyan][{self.index}/{self.total}] {name}[/]: {what}")
        start = time.perf_counter()
        yield
        self.console.print(f"      done in {time.perf_counter() - start:.1f} s")


@dataclass
class TargetPlan:
    """Which targets a run serves and what the deployable must look like for them."""

    targets: list[Target]
    available: list[Target]
    int8_groups: list[list[Target]]  # INT8 targets grouped by the scheme their kernels want, first seen first
    channel_multiple: int
    static_shapes: bool
    notes: list[str] = field(default_factory=list)

    @property
    def int8_target(self) -> Target | None:
        """The first INT8 target: its scheme is the run-root deployable's (and the teacher PTQ's)."""
        return self.int8_groups[0][0] if self.int8_groups else None

    def int8_variants(self) -> dict[str, list[Target]]:
        """QAT student name -> the INT8 targets it serves: DEPLOYABLE for the first scheme (with no INT8
        target, the default scheme, for the ablation), then one more per other scheme."""
        groups = self.int8_groups or [[]]
        return {DEPLOYABLE if i == 0 else f"{DEPLOYABLE}-{group[0].name}": group for i, group in enumerate(groups)}

    def deployed_variant(self, target: Target) -> str:
        """What `target` deploys: the QAT student in its scheme, or the KD student in FP16 / FP32."""
        if target.precision == "fp16":
            return FP16_VARIANT
        if target.precision == "fp32":
            return "student-kd-fp32"
        return next(name for name, group in self.int8_variants().items() if target in group)

    @property
    def primary(self) -> str:
        """The run-root deployable (DIR/model.onnx): what the first target deploys."""
        return self.deployed_variant(self.targets[0])

    @property
    def deployed(self) -> set[str]:
        return {self.deployed_variant(t) for t in self.targets}

    @property
    def scheme(self) -> QuantScheme:
        return self.int8_target.quantization if self.int8_target else QuantScheme()

    @property
    def scheme_source(self) -> str | None:
        return self.int8_target.name if self.int8_target else None

    @property
    def wants_fp16(self) -> bool:
        return any(t.precision == "fp16" for t in self.targets)

    def describe(self) -> str:
        w, a = self.scheme.weights, self.scheme.activations
        extra = [name for name in self.int8_variants() if name != DEPLOYABLE]
        return (f"{w.dtype} {'sym' if w.symmetric else 'asym'} {'per-channel' if w.per_channel else 'per-tensor'} "
                f"weights, {a.dtype} {'sym' if a.symmetric else 'asym'} activations"
                + (f" (from {self.scheme_source})" if self.scheme_source else "")
                + (f", and {', '.join(extra)} for the other scheme(s)" if extra else ""))


def plan_targets(targets: list[Target]) -> TargetPlan:
    """One QAT student per distinct INT8 scheme among the targets; channel rounding satisfies every target."""
    if not targets:
        raise BadInput("no targets given: name at least one target profile (see `edgekd targets`)")
    by_name: dict[str, Target] = {}
    for t in targets:  # a target named twice is served (and timed) once; two different ones, refused
        if by_name.setdefault(t.name, t) != t:
            raise BadInput(f"two different target profiles are named '{t.name}': rename one (its 'name' key)")
    targets = list(by_name.values())
    available = [t for t in targets if availability(t)[0]]
    groups: list[list[Target]] = []
    for t in (t for t in targets if t.precision == "int8"):
        group = next((g for g in groups if g[0].quantization == t.quantization), None)
        if group is None:
            groups.append([t])
        else:
            group.append(t)
    notes = [f"{g[0].name} wants a different INT8 scheme than {groups[0][0].name}: "
             f"{DEPLOYABLE}-{g[0].name} is QAT-trained for it" for g in groups[1:]]
    multiple = 1
    for t in targets:
        multiple = min(math.lcm(multiple, t.channel_multiple), 64)
    return TargetPlan(targets=targets, available=available, int8_groups=groups, channel_multiple=multiple,
                      static_shapes=any(t.static_shapes for t in targets), notes=notes)


def recipe_hash(recipe: Recipe) -> str:
    """What must not change for --resume; trusting another factory changes no result."""
    return hashlib.sha256(json.dumps(recipe.model_dump(exclude={"out", "trust_factories"}),
                                     sort_keys=True).encode()).hexdigest()


@dataclass
class Variant:
    """A model of the ablation together with how to rebuild it and what training produced."""

    model: nn.Module
    ref: object
    transforms: list
    info: dict = field(default_factory=dict)


def as_variant(loaded: LoadedModel) -> Variant:
    return Variant(loaded.model, loaded.ref, list(loaded.transforms), {})


@dataclass
class Context:
    recipe: Recipe
    data: Dataset
    teacher: LoadedModel
    plan: TargetPlan
    run: RunState
    console: Console
    resume: bool = False

    @property
    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One input batch: a sample array, or (input_ids, attention_mask) of two texts for text data."""
        if self.data.is_text:
            from edgekd.hf import encode_batch

            return encode_batch(tokenizer=self.tokenizer, texts=self.data.x_val[:2], max_length=self.max_length)
        return torch.from_numpy(np.ascontiguousarray(self.data.x_val[:1]))

    @cached_property
    def tokenizer(self):
        """The tokenizer saved with a Hugging Face teacher (text data only)."""
        from edgekd.hf import load_tokenizer

        return load_tokenizer(path=self.teacher.model.source_dir)

    @property
    def max_length(self) -> int:
        """Token positions text models see: 128 (the benchmark's sequence length) within the teacher's limits."""
        from edgekd.hf import DEFAULT_MAX_LENGTH

        teacher = self.teacher.model
        return min(DEFAULT_MAX_LENGTH, teacher.config.max_position_embeddings,
                   teacher.max_seq_length or DEFAULT_MAX_LENGTH)


def _stored(ctx: Context, stage: str, build) -> Variant:
    """A variant built once and kept in the run directory (reloaded on --resume)."""
    holder: dict = {}

    def build_and_keep():
        variant = build()
        holder["v"] = variant
        return variant.model, variant.ref, variant.transforms, variant.info

    model, transforms, info = ctx.run.model(stage, build_and_keep)
    ref = holder["v"].ref if "v" in holder else ctx.teacher.ref
    return Variant(model, ref, transforms, info)


# ---- 1. prune ---------------------------------------------------------------------------------

def _check_teacher_takes_data(ctx: Context) -> None:
    """A teacher made for other data fails here, naming both, rather than deep inside a stage."""
    example = ctx.example_input
    inputs = example if isinstance(example, tuple) else (example,)
    try:
        with torch.no_grad():
            ctx.teacher.model.eval()(*inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise BadInput(f"teacher '{ctx.recipe.teacher}' does not take --data '{ctx.recipe.data}' samples "
                       f"(shape {shapes}): {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None


def make_student(ctx: Context) -> Variant:
    spec = ctx.recipe.student
    _check_teacher_takes_data(ctx)

    def build() -> Variant:
        if ctx.data.is_text and spec.startswith(("layers:", "prune:")):
            return _encoder_student(ctx)
        if spec.startswith("prune:"):
            return _pruned_student(ctx, float(spec.split(":", 1)[1]))  # validated by Recipe
        if spec.startswith("layers:"):
            raise BadInput(f"student '{spec}': layers:N needs a Hugging Face encoder teacher and text data")
        from edgekd.checkpoint import load_model

        loaded = load_model(spec, trusted_factories=ctx.recipe.trusted_factories(), seed=ctx.recipe.seed)
        return Variant(loaded.model, loaded.ref, list(loaded.transforms), {"given": spec})

    return _stored(ctx, "student", build)


def _encoder_student(ctx: Context) -> Variant:
    """`layers:N` / `prune:R` of a Hugging Face sentence-encoder teacher."""
    from edgekd.hf import make_student as encoder_student

    spec = ctx.recipe.student
    result = encoder_student(teacher=ctx.teacher.model, spec=spec, example_inputs=ctx.example_input,
                             channel_multiple=ctx.plan.channel_multiple)
    return Variant(result.model, ctx.teacher.ref, ctx.teacher.transforms + [result.transform],
                   {spec.split(":", 1)[0]: result.report})


def prune_with_recovery(*, teacher: nn.Module, data: Dataset, ratio: float, channel_multiple: int = 1,
                        importance: str = "magnitude", global_pruning: bool = False, steps: int = 1,
                        recovery_epochs: int = 0, ignore_layers=(), seed: int = 0, collate=None):
    """Prune `teacher` into a student; Taylor importance ranks channels by the KD loss's gradients,
    and each pruning step is followed by `recovery_epochs` of KD against the unpruned teacher."""
    from edgekd.distill import LOSSES, DistillConfig, distill
    from edgekd.prune import calibration_loss, prune

    example = torch.from_numpy(np.ascontiguousarray(data.x_val[:1]))
    loss_fn = None
    if importance == "taylor":
        batches = [torch.from_numpy(np.ascontiguousarray(data.x_train[i:i + 64])) for i in range(0, 256, 64)]
        loss_fn = calibration_loss(batches=batches, teacher=teacher, criterion=LOSSES["response"](temperature=4.0))
    recovery = None
    if recovery_epochs:
        def recovery(model: nn.Module, step: int) -> nn.Module:
            config = DistillConfig(epochs=recovery_epochs, lr=2e-3, patience=None, seed=seed, collate=collate)
            return distill(student=model, teacher=teacher, data=data, config=config, progress=False).model

    return prune(model=teacher, example_inputs=example, ratio=ratio, channel_multiple=channel_multiple,
                 importance=importance, global_pruning=global_pruning, ignore_layers=ignore_layers, steps=steps,
                 recovery=recovery, loss_fn=loss_fn)


def _pruned_student(ctx: Context, ratio: float) -> Variant:
    cfg = ctx.recipe.prune
    result = prune_with_recovery(teacher=ctx.teacher.model, data=ctx.data, ratio=ratio,
                                 channel_multiple=ctx.plan.channel_multiple, importance=cfg.importance,
                                 global_pruning=cfg.global_pruning, steps=cfg.steps,
                                 recovery_epochs=cfg.recovery_epochs, ignore_layers=cfg.ignore_layers,
                                 seed=ctx.recipe.seed, collate=_collate(ctx))
    return Variant(result.model, ctx.teacher.ref, ctx.teacher.transforms + [result.transform],
                   {"prune": result.report})


# ---- 2. distill -------------------------------------------------------------------------------

def _distill_config(ctx: Context, *, kd: bool, epochs: int | None = None, student: nn.Module | None = None):
    """The recipe's distill settings; for a text `student` trained with KD, on top of the encoder KD
    recipe (edgekd.hf.encoder_kd_config: embedding + hidden + attention terms, text augmentation)."""
    from edgekd.distill import config_from_mapping

    settings = {"seed": ctx.recipe.seed, **ctx.recipe.distill, "kd": kd,
                "response": ctx.data.task == "classification" and ctx.recipe.distill.get("response", True)}
    if epochs is not None:
        settings["epochs"] = epochs
    if not kd:
        settings["losses"] = []
    config = config_from_mapping(settings, source="recipe: distill")
    if ctx.data.is_text and kd and student is not None:
        return _encoder_kd_config(ctx, student=student, teacher=ctx.teacher.model,
                                  **{k: getattr(config, k) for k in settings if k != "response"})
    config.collate = _collate(ctx)
    return config


def _encoder_kd_config(ctx: Context, *, student: nn.Module, teacher: nn.Module, **overrides):
    from edgekd.hf import encoder_kd_config

    if not overrides.get("losses"):
        overrides.pop("losses", None)  # none given: the encoder recipe's terms
    return encoder_kd_config(student=student, teacher=teacher, tokenizer=ctx.tokenizer, max_length=ctx.max_length,
                             **overrides)


def _collate(ctx: Context):
    if not ctx.data.is_text:
        return None
    from edgekd.hf import TextCollate

    return TextCollate(tokenizer=ctx.tokenizer, max_length=ctx.max_length)


def _distill(ctx: Context, model: nn.Module, *, kd: bool, epochs: int | None = None, out_dir=None):
    from edgekd.distill import distill

    student = copy.deepcopy(model)
    return distill(student=student, teacher=ctx.teacher.model if kd else None, data=ctx.data,
                   config=_distill_config(ctx, kd=kd, epochs=epochs, student=student), out_dir=out_dir,
                   resume=ctx.resume, progress=True)


def train_student(ctx: Context, student: Variant, *, kd: bool) -> Variant:
    """KD training, or the no-KD baseline: trained on labels, or, for unlabeled text (nothing to learn
    from without a teacher), the student as made."""
    stage = "student-kd-fp32" if kd else "student-no-kd"

    def build() -> Variant:
        if not kd and ctx.data.is_text:
            return Variant(copy.deepcopy(student.model), student.ref, student.transforms,
                           {"untrained": "unlabeled text: no training signal without the teacher"})
        result = _distill(ctx, student.model, kd=kd, out_dir=ctx.run.checkpoint_dir(stage))
        return Variant(result.model, student.ref, student.transforms,
                       {"history": result.history, "best_epoch": result.best_epoch, "metrics": result.metrics})

    return _stored(ctx, stage, build)


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


def quantize_student(ctx: Context, student: Variant, *, variant: str = DEPLOYABLE) -> Variant:
    """QAT+KD: the FP32 KD student teaches its own fake-quant copy, in the scheme `variant`'s targets
    want (`TargetPlan.int8_variants`); layer kinds that INT8 makes slower on a measurable one stay float."""
    from edgekd.quant import checkpoint_transform, qat_distill_config, quantize

    q = ctx.recipe.quant
    group = ctx.plan.int8_variants()[variant]
    timed_on = next((t for t in group if t in ctx.plan.available), None)

    def build() -> Variant:
        kd = _distill_config(ctx, kd=True)
        config = _quant_config(ctx, mode="qat", group=group)
        config.distill = qat_distill_config(epochs=q.epochs, lr=q.lr, seed=kd.seed, batch_size=kd.batch_size,
                                            temperature=kd.temperature, alpha=kd.alpha, response=kd.response,
                                            collate=kd.collate)
        if ctx.data.is_text:  # the FP32 student teaches its fake-quant copy through the encoder KD terms
            fine_tune = {k: getattr(config.distill, k) for k in
                         ("epochs", "lr", "weight_decay", "patience", "warmup_epochs", "seed", "batch_size")}
            config.distill = _encoder_kd_config(ctx, student=student.model, teacher=student.model, **fine_tune)
        # Latency-aware layer choice times single-input models only.
        config.latency_aware = q.latency_aware and not ctx.data.is_text and timed_on is not None
        result = quantize(model=student.model, data=ctx.data, config=config, teacher=student.model,
                          target=timed_on if config.latency_aware else None,
                          example_inputs=ctx.example_input, out_dir=ctx.run.checkpoint_dir(variant),
                          resume=ctx.resume)
        report = result.report.as_dict()
        choice = result.layer_choice
        report["latency_choice"] = choice.as_dict() if choice else None
        transforms = student.transforms + ([] if result.kept_float else [checkpoint_transform(result.model)])
        report["targets"] = [t.name for t in group]
        return Variant(result.model, student.ref, transforms, {"history": result.history, "quantization": report})

    return _stored(ctx, variant, build)


def quantize_teacher(ctx: Context) -> Variant:
    """Post-training quantization of the teacher, the baseline a team would try first."""
    from edgekd.quant import checkpoint_transform, qat_distill_config, quantize

    def build() -> Variant:
        config = _quant_config(ctx, mode="ptq", group=ctx.plan.int8_variants()[DEPLOYABLE])
        config.latency_aware = False
        config.distill = qat_distill_config(collate=_collate(ctx))  # calibration batches are collated like training's
        result = quantize(model=ctx.teacher.model, data=ctx.data, config=config)
        return Variant(result.model, ctx.teacher.ref, ctx.teacher.transforms + [checkpoint_transform(result.model)],
                       {"quantization": result.report.as_dict()})

    return _stored(ctx, "teacher-int8-ptq", build)


# ---- 4. export --------------------------------------------------------------------------------

@dataclass
class Artifact:
    variant: str
    onnx: Path
    openvino: Path | None
    parity: dict
    int8_executed: dict
    model: nn.Module
    info: dict
    precision: str = "fp32"  # of the float tensors ("fp16" for FP16_VARIANT); INT8 is in int8_executed

    @property
    def executed_precision(self) -> str:
        return "int8" if any(self.int8_executed.values()) else self.precision

    def for_target(self, target: Target) -> Path:
        return self.openvino if target.runtime == "openvino" and self.openvino else self.onnx


def export_variants(ctx: Context, variants: dict[str, Variant]) -> dict[str, Artifact]:
    """Every variant exported the same way; the first target's deployable goes to the run root, the
    rest to variants/<name>/ (text runs: each deployed student with its Optimum folder, hf/)."""
    from edgekd.export import export

    artifacts = {}
    for name, variant in variants.items():
        out_dir = ctx.run.out if name == ctx.plan.primary else ctx.run.out / "variants" / name
        precision = "fp16" if name == FP16_VARIANT else "fp32"

        def run_export(variant=variant, out_dir=out_dir, name=name, precision=precision) -> dict:
            result = export(model=_export_view(ctx, variant.model), out_dir=out_dir, formats=_formats(ctx, name),
                            static_shapes=ctx.plan.static_shapes, precision=precision, **_export_inputs(ctx))
            if name in ctx.plan.deployed and ctx.data.is_text:
                from edgekd.hf import write_optimum_layout

                write_optimum_layout(out_dir=out_dir / "hf", encoder=variant.model, tokenizer=ctx.tokenizer,
                                     onnx_path=result.onnx, openvino_xml=result.openvino_xml,
                                     max_length=ctx.max_length)
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


def _export_view(ctx: Context, model: nn.Module) -> nn.Module:
    """What is exported: the model, or for a sentence encoder its (embedding, token states) view."""
    if not ctx.data.is_text:
        return model
    from edgekd.hf import FeatureExtraction

    return FeatureExtraction(model)


def _export_inputs(ctx: Context) -> dict:
    """Example and parity inputs (and for text the input/output names and dynamic axes) for export."""
    if not ctx.data.is_text:
        return {"example_inputs": ctx.example_input, "parity_inputs": ctx.data.x_test, "task": ctx.data.task,
                "labels": ctx.data.y_test}
    from edgekd.hf import export_inputs

    return export_inputs(tokenizer=ctx.tokenizer, texts=ctx.data.x_test, max_length=ctx.max_length)


# ---- 5. benchmark -----------------------------------------------------------------------------

def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _size_mb(artifact: Artifact) -> float:
    return artifact.onnx.stat().st_size / 2**20


def benchmark_variants(ctx: Context, artifacts: dict[str, Artifact]) -> dict:
    """Metric of every exported variant on the same held-out data, its latency on every target,
    and the full benchmark on every target (absent ones: not-measured) of what that target deploys:
    the INT8 student, or for an fp16 / fp32 target the KD student in that precision."""
    from edgekd.bench import benchmark, measure_latency, predict

    b = ctx.recipe.bench
    inputs, sample = _runtime_inputs(ctx)
    predictions = {name: predict(model=a.onnx, inputs=inputs) for name, a in artifacts.items()}
    metrics = {name: _metric(ctx, pred, predictions["teacher-fp32"]) for name, pred in predictions.items()}
    latency = {name: {} for name in artifacts}
    for target in ctx.plan.available:
        for name, artifact in artifacts.items():
            ctx.console.print(f"      timing {name} on {target.name}")
            latency[name][target.name] = measure_latency(model=artifact.for_target(target), target=target,
                                                         inputs=sample, time_budget_s=b.ablation_time_budget_s)
    def retention(name: str) -> float:
        return metrics[name]["value"] / metrics["teacher-fp32"]["value"]

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


def _runtime_inputs(ctx: Context):
    """(held-out test inputs, one sample to time) as the exported artifacts take them; texts are
    tokenized and padded to `ctx.max_length` (128: the sequence length latency is quoted at)."""
    if not ctx.data.is_text:
        return ctx.data.x_test, ctx.data.x_test[:1]
    from edgekd.hf import encode_batch

    ids, mask = encode_batch(tokenizer=ctx.tokenizer, texts=ctx.data.x_test, max_length=ctx.max_length,
                             pad_to=ctx.max_length)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    return feeds, {name: array[:1] for name, array in feeds.items()}


def _metric(ctx: Context, outputs: np.ndarray, teacher_outputs: np.ndarray) -> dict:
    if ctx.data.task == "classification":
        return {"name": "accuracy", "value": float((outputs.argmax(1) == ctx.data.y_test).mean())}
    from edgekd.hf import embedding_agreement

    agreement = embedding_agreement(student_emb=outputs, teacher_emb=teacher_outputs)
    return {"name": "spearman_vs_teacher", "value": float(agreement["spearman"]), **agreement}


# ---- 6. report --------------------------------------------------------------------------------

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

    teacher_p50 = {t: m["p50"] for t, m in measured["latency"]["teacher-fp32"].items()}
    final_p50 = {t: m["p50"] for t, m in measured["latency"][primary].items()}
    preds = measured["predictions"]
    report = {
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
        "audit": audit(y_true=ctx.data.y_test, teacher_pred=preds["teacher-fp32"], student_pred=preds[primary])
        if ctx.data.task == "classification" else None,
        "quantization": {"scheme": ctx.plan.scheme.model_dump(), "scheme_source": ctx.plan.scheme_source,
                         **artifacts[DEPLOYABLE].info.get("quantization", {})},
        "prune": ctx.run.stages.get("student", {}).get("info", {}).get("prune"),
        "notes": ctx.plan.notes + _teacher_notes(measured["metrics"]),
        "host": detect_host().as_dict(),
    }
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
    teacher, baseline = metrics["teacher-fp32"], metrics["student-no-kd"]
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
    config = asdict(_distill_config(ctx, kd=True))
    config.pop("collate", None)
    return {"distill": config, "quant": ctx.recipe.quant.model_dump(), "prune": ctx.recipe.prune.model_dump(),
            "channel_multiple": ctx.plan.channel_multiple, "scheme": ctx.plan.scheme.model_dump()}


def all_slos_met(report: dict) -> bool:
    return all(t["slo"]["verdict"] != "fail" for t in report["targets"])
