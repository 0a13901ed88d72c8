"""`distill`: check the inputs, plan the stages a mode needs, run them in order.

offline     the student learns from a trained teacher (cached outputs by default).
self        born-again: fresh copies of the teacher's architecture learn from it, each generation
            teaching the next.
online      Deep Mutual Learning: `config.peers` copies of the student (the student plus freshly
            initialised copies) learn from each other's softened outputs; no teacher. The best
            peer on validation is returned.
multistage  teacher -> assistant -> student (teacher-assistant KD).
kd=False    the undistilled baseline in any mode: the same loop, schedule and data, hard-label CE
            on the labeled samples only; a teacher, if given, is only used for teacher agreement.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgekd.distill import distributed
from edgekd.distill.cache import default_cache_root
from edgekd.distill.config import DistillConfig, DistillResult, validate_config
from edgekd.distill.inference import model_device
from edgekd.distill.losses import LOSSES
from edgekd.distill.metrics import task_metric
from edgekd.distill.objective import build_objective
from edgekd.distill.trainer import Stage, StageResult, TrainData, Trainer
from edgekd.errors import BadInput


def fresh_copy(model: nn.Module, role: str) -> nn.Module:
    """The same architecture with newly initialised weights (every module's reset_parameters)."""
    clone = copy.deepcopy(model)
    for name, module in clone.named_modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif any(True for _ in module.parameters(recurse=False)):
            raise BadInput(f"cannot re-initialise module '{name}' ({type(module).__name__}) of the {role}: "
                           "it has no reset_parameters(); pass a freshly built student instead")
    for param in clone.parameters():
        param.requires_grad_(True)
    return clone


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]  # noqa: E731
    return shapes(a) == shapes(b)


def _parameter_dtype(model: nn.Module) -> np.dtype | None:
    """The numpy dtype of the model's floating-point parameters (None if numpy has no such dtype)."""
    param = next((p for p in model.parameters() if p.dtype.is_floating_point), None)
    try:
        return None if param is None else torch.empty((), dtype=param.dtype).numpy().dtype
    except TypeError:
        return None


def _train_data(data, config: DistillConfig, student: nn.Module) -> TrainData:
    """Reject data the run cannot use, naming the array and what is wrong with it."""
    if not all(hasattr(data, a) for a in ("x_train", "y_train", "x_val", "y_val", "task")):
        raise BadInput(f"data must be an edgekd Dataset (edgekd.data.load_data), got {type(data).__name__}")
    task_metric(data.task)
    arrays = {}
    for split in ("train", "val"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x is None or len(x) == 0:
            raise BadInput(f"data x_{split} is empty: " + ("nothing to distill on" if split == "train" else
                                                              "validation needs held-out samples"))
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                raise BadInput(f"data x_{split} has NaN or Inf values in {int(bad.sum())} sample(s) "
                               f"(first: index {int(np.flatnonzero(bad)[0])})")
            expected = _parameter_dtype(student)
            if config.collate is None and expected is not None and expected != x.dtype:
                raise BadInput(f"data x_{split} has dtype {x.dtype} but the student's parameters are {expected}: "
                               f"convert the data (x.astype(np.{expected})) or the model")
        if y is not None:
            if y.ndim != 1 or y.dtype.kind not in ("i", "u") or len(y) != len(x):
                raise BadInput(f"data y_{split} must be 1-D integer labels, one per sample of x_{split} "
                               f"({len(x)}); got dtype {y.dtype} shape {y.shape}")
            if len(y) and int(y.min()) < -1:
                raise BadInput(f"data y_{split} has label {int(y.min())}; labels are >= 0, or -1 for unlabeled")
            y = y.astype(np.int64)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    if not config.kd and (arrays["y_train"] is None or not (arrays["y_train"] >= 0).any()):
        raise BadInput("kd=False (the undistilled baseline) trains on labels, and data y_train has no labeled sample")
    return TrainData(**arrays, task=data.task)


def _check_mode(config: DistillConfig, task: str, student, teacher, assistant) -> None:
    mode = config.mode
    if student is None and not (mode == "self" and config.kd):
        raise BadInput("distill: a student model is required (only mode 'self' builds one from the teacher)")
    for role, model in (("student", student), ("teacher", teacher), ("assistant", assistant)):
        if model is not None and not isinstance(model, nn.Module):
            raise BadInput(f"distill: the {role} must be a torch.nn.Module, got {type(model).__name__}")
    if not config.kd:
        return
    if mode in ("offline", "self", "multistage") and teacher is None:
        raise BadInput(f"mode '{mode}' distills from a teacher and none was given "
                       "(use mode 'online' for teacher-free mutual learning, or kd=False for the baseline)")
    if mode == "online":
        if teacher is not None:
            raise BadInput("mode 'online' trains peers that teach each other; pass no teacher (or use mode 'offline')")
        if task != "classification":
            raise BadInput(f"mode 'online' mutual learning exchanges class probabilities; task '{task}' has none")
        feature_terms = [t.name for t in config.losses if LOSSES[t.name].level == "feature" or t.student_layer]
        if feature_terms:
            raise BadInput(f"mode 'online' supports output-level losses only, not {', '.join(feature_terms)}")
    if mode == "multistage":
        if assistant is None:
            raise BadInput("mode 'multistage' (teacher -> assistant -> student) needs an assistant model")
        named = [t.name for t in config.losses if t.student_layer or t.teacher_layer] or list(config.layer_map)
        if named:
            raise BadInput("mode 'multistage': layer names cannot refer to both stages' models; leave layers unset "
                           "(proportional-depth block mapping) for " + ", ".join(named))
    if mode == "self" and student is not None and not _same_architecture(student, teacher):
        raise BadInput("mode 'self' (born-again) trains the teacher's own architecture; the student given differs "
                       "(omit it to get a fresh copy of the teacher)")


@contextlib.contextmanager
def _reproducible(config: DistillConfig):
    """Deterministic algorithms for the run, and the caller's global RNG left as it was."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    with torch.random.fork_rng(devices=[]):
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


StudentsFactory = Callable[[], list[nn.Module]]
_PREVIOUS = object()  # in a plan: "the model the stage before trained"


def _plan(config: DistillConfig, student, teacher, assistant) -> list[tuple[str, StudentsFactory, object, bool]]:
    """(name, students factory, teacher or a 'previous stage' marker, online) per stage.

    Students are built inside their stage, after seeding, so a resumed run rebuilds them identically.
    """
    previous = _PREVIOUS
    if not config.kd or config.mode == "offline":
        return [("student", lambda: [student], teacher, False)]
    if config.mode == "online":
        return [("peers", lambda: [student] + [fresh_copy(student, "student") for _ in range(config.peers - 1)], None, True)]
    if config.mode == "multistage":
        return [("assistant", lambda: [assistant], teacher, False), ("student", lambda: [student], previous, False)]
    plan = []
    for generation in range(1, config.generations + 1):
        last = generation == config.generations
        factory = (lambda: [student]) if last and student is not None else (lambda: [fresh_copy(teacher, "teacher")])
        plan.append((f"generation{generation}", factory, teacher if generation == 1 else previous, False))
    return plan


def _cache_root(config: DistillConfig, out_dir: Path | None) -> Path | None:
    if not config.cache:
        return None
    if config.cache_dir is not None:
        return Path(config.cache_dir)
    return out_dir / "teacher_cache" if out_dir is not None else default_cache_root()


def distill(*, student: nn.Module | None = None, data, teacher: nn.Module | None = None,
            config: DistillConfig | None = None, out_dir: str | Path | None = None, resume: bool = False,
            callbacks: Sequence[object] = (), assistant: nn.Module | None = None,
            progress: bool = True) -> DistillResult:
    """Train `student` (in place, FP32) by knowledge distillation from `teacher` on `data` (an edgekd Dataset).

    out_dir gets checkpoints/ (resumable training state, one file per stage) and, unless
    config.cache_dir says otherwise, teacher_cache/. With resume=True a run continues from its
    last completed epoch and ends with the same weights as an uninterrupted run. Callbacks are
    objects with optional on_epoch_start(epoch, model) / on_epoch_end(epoch, model, metrics)
    (0-based epochs), called for the final stage's model(s), on every rank.
    Raises BadInput for unusable inputs and TrainingDiverged if the loss turns NaN/Inf.
    """
    config = config or DistillConfig()
    validate_config(config, LOSSES)
    _check_mode(config, getattr(data, "task", None), student, teacher, assistant)
    reference = student if student is not None else teacher
    train_data = _train_data(data, config, reference)
    out_dir = Path(out_dir) if out_dir is not None else None
    info = distributed.setup(model_device(reference))
    plan = _plan(config, student, teacher, assistant)
    results: list[StageResult] = []
    try:
        for number, (name, students, stage_teacher, online) in enumerate(plan, start=1):
            if stage_teacher is _PREVIOUS:
                stage_teacher = results[-1].model
            final = number == len(plan)
            title = name if len(plan) == 1 else f"stage {number}/{len(plan)}: {name}"
            ckpt_dir = None
            if out_dir is not None:
                ckpt_dir = out_dir / "checkpoints" if len(plan) == 1 else out_dir / "checkpoints" / f"{number}-{name}"
            with _reproducible(config):
                torch.manual_seed(config.seed)
                models = students()
                objectives = [build_objective(config, train_data.task, m, None if online else stage_teacher) for m in models]
                stage = Stage(title, models, objectives, stage_teacher, online=online, ckpt_dir=ckpt_dir,
                              cache_root=_cache_root(config, out_dir), callbacks=tuple(callbacks) if final else ())
                results.append(Trainer(stage, train_data, config, resume=resume, progress=progress, info=info).run())
        distributed.barrier(info)  # rank 0 has written its last checkpoint before anyone leaves
    finally:
        distributed.teardown(info)
    *earlier, last = results
    stages = [DistillResult(r.model, r.history, r.best_epoch, r.metrics) for r in earlier]
    return DistillResult(last.model, last.history, last.best_epoch, last.metrics, stages=stages)
