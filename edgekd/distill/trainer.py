"""The training loop every mode shares.

One `Stage` trains one student (or the peers of online mode) against a teacher: from the offline
cache, live (when augmenting), or the peers themselves. Per epoch: train (on the config's batches,
random ones by default), validate on held-out data (task metric and teacher agreement), early-stop
on the monitored metric, keep the best weights, and write a checkpoint holding everything
resumption needs (weights, optimizer, scheduler, RNG state, epoch, history, early-stopping state)
atomically, so an interrupted run resumed from it ends with the same weights as an uninterrupted
one. Within an epoch a checkpoint is also written every `checkpoint_minutes` (with the steps done
and their running loss sums): a text epoch over a large corpus on a CPU host takes hours.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgekd.data import SEED_LIMIT, content_hash
from edgekd.distill import distributed
from edgekd.distill.cache import TeacherCache, teacher_cache
from edgekd.distill.config import DistillConfig, describe_setting
from edgekd.distill.distributed import DistInfo
from edgekd.distill.hooks import FeatureTaps, output_tensor
from edgekd.distill.inference import default_collate, eval_mode, model_device, predict, to_device
from edgekd.distill.metrics import task_metric
from edgekd.distill.objective import Objective, combine_peers
from edgekd.errors import NOT_INPUT_ERRORS, BadInput, EdgeKDError
from edgekd.io import atomic_path

FORMAT = "edgekd.distill.train_state/1"
STATE_FILE = "train_state.pt"


class TrainingDiverged(EdgeKDError):
    """The loss became NaN or Inf. Training stops before the bad step is applied and the last good
    checkpoint (previous epoch) is kept. Exit code 1: the inputs were valid, the run failed; lower
    the learning rate or set grad_clip, then resume or rerun."""

    exit_code = 1


@dataclass
class TrainData:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray | None
    task: str


@dataclass
class Stage:
    """One training loop: who learns, from whom, and where its state and cache go."""

    title: str
    students: list[nn.Module]  # one student, or the peers of online mode
    objectives: list[Objective]  # one per student
    teacher: nn.Module | None  # None: online peers, or the undistilled baseline without a teacher
    online: bool = False
    ckpt_dir: Path | None = None
    cache_root: Path | None = None  # None: no offline cache
    callbacks: Sequence[object] = field(default_factory=tuple)


@dataclass
class StageResult:
    model: nn.Module
    history: list[dict]
    best_epoch: int
    metrics: dict


class _Step(nn.Module):
    """Students and objectives as one module, so DistributedDataParallel syncs every trained
    parameter (student weights and learned projections) and checkpoints hold them all."""

    def __init__(self, students, objectives, taps: list[FeatureTaps], online: bool, temperature: float):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.objectives = nn.ModuleList(objectives)
        self._taps, self._online, self._temperature = taps, online, temperature

    def forward(self, inputs, labels, teacher_out, teacher_feats):
        outs = [output_tensor(student(inputs), "student") for student in self.students]
        total, values = outs[0].new_zeros(()), {}
        for k, (out, objective, taps) in enumerate(zip(outs, self.objectives, self._taps)):
            target = combine_peers(outs, k, self._temperature) if self._online else teacher_out
            loss, terms = objective(out, taps.features, target, teacher_feats, labels)
            total = total + loss
            prefix = f"peer{k}/" if self._online else ""
            values.update({prefix + name: value for name, value in terms.items()})
        return total, values


def _position(state: dict) -> str:
    """Where a checkpoint stands, as error messages name it (0-based epochs, like the loss messages)."""
    within = state.get("within")
    return f"epoch {state['epoch']}" if within is None else f"epoch {within['epoch']} after step {within['steps'] - 1}"


def _cosine_schedule(optimizer, *, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def shift_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Default augmentation for image batches [B, C, H, W]: a random shift of up to one pixel."""
    if x.ndim != 4 or x.dtype.kind != "f":
        raise BadInput(f"augment=True shifts image batches [B, C, H, W]; this data has shape {x.shape[1:]} "
                       f"dtype {x.dtype}: pass a callable augment(x, rng) instead")
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(rng.integers(0, 3, size=(len(x), 2))):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


@dataclass
class _Epoch:
    """An epoch's training samples (x_train, or all of it augmented), this rank's batches of them (indices
    into x_train), and the augmentation still to apply batch by batch (None: none, or done already)."""

    x: np.ndarray
    batches: list[np.ndarray]
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None


class _Batches(torch.utils.data.Dataset):
    """Batch i of an epoch as (index, model input, labels); augmentation seeded by (seed, epoch, i)
    so the same batch comes out whether loaded in this process or a worker."""

    def __init__(self, epoch: _Epoch, y: np.ndarray | None, config: DistillConfig, number: int):
        self.epoch, self.y, self.config, self.number = epoch, y, config, number

    def __len__(self):
        return len(self.epoch.batches)

    def __getitem__(self, i):
        index = self.epoch.batches[i]
        x = self.epoch.x[index]
        if self.epoch.augment is not None:
            x = self.epoch.augment(x, np.random.default_rng([self.config.seed, self.number, i]))
        labels = None if self.y is None else torch.from_numpy(self.y[index])
        return index, (self.config.collate or default_collate)(x), labels


def _unbatched(item):
    return item


def _iterate(dataset: _Batches, num_workers: int, start: int):
    """Batches `start`.. of the epoch (a resumed epoch skips the ones done before its checkpoint)."""
    if num_workers == 0:
        return (dataset[i] for i in range(start, len(dataset)))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, len(dataset)),
                                            num_workers=num_workers, collate_fn=_unbatched))


class Trainer:
    """Runs one `Stage` to completion (or resumes it) and returns the trained model."""

    def __init__(self, stage: Stage, data: TrainData, config: DistillConfig, *, resume: bool, progress: bool,
                 info: DistInfo):
        self.stage, self.data, self.config, self.info = stage, data, config, info
        self.resume, self.show_progress = resume, progress and info.is_writer
        self.device = model_device(stage.students[0])
        self.metric = task_metric(data.task)
        self.state_path = stage.ckpt_dir / STATE_FILE if stage.ckpt_dir else None
        self.last_checkpoint: str | None = None  # where the latest checkpoint stands, for error messages

    # ----- teacher ---------------------------------------------------------------------------
    def _teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t for o in self.stage.objectives for t in o.teacher_taps))

    def _open_cache(self, x: np.ndarray, taps) -> TeacherCache:
        """Rank 0 fills the cache entry; the other ranks wait, then map the same files."""
        kwargs = dict(taps=taps, collate=self.config.collate, batch_size=self.config.eval_batch_size,
                      root=self.stage.cache_root)
        if self.info.is_writer:
            cache = teacher_cache(self.stage.teacher, x, build=True, **kwargs)
        distributed.barrier(self.info)
        return cache if self.info.is_writer else teacher_cache(self.stage.teacher, x, build=False, **kwargs)

    def _live_teacher(self, inputs, taps: FeatureTaps):
        teacher = self.stage.teacher
        with torch.no_grad():
            out = output_tensor(teacher(to_device(inputs, model_device(teacher))), "teacher")
        move = lambda t: t.detach().float().to(self.device)  # noqa: E731
        return move(out), {name: move(value) for name, value in taps.features.items()}

    def _val_teacher_outputs(self) -> torch.Tensor | None:
        if self.stage.teacher is None:
            return None
        if self.stage.cache_root is not None:
            return torch.from_numpy(np.asarray(self._open_cache(self.data.x_val, ()).outputs, dtype=np.float32))
        return predict(self.stage.teacher, self.data.x_val, collate=self.config.collate,
                       batch_size=self.config.eval_batch_size, role="teacher")

    # ----- checks ------------------------------------------------------------------------------
    def _probe(self, student_taps: list[FeatureTaps], cache: TeacherCache | None, teacher_taps: FeatureTaps | None):
        """Run each model on two samples: reject data the models cannot take, check output shapes,
        and let the objectives create their lazily shaped parameters."""
        x = self.data.x_train[:2]
        inputs = (self.config.collate or default_collate)(x)
        teacher_out = teacher_feats = None
        if cache is not None:
            teacher_out, teacher_feats = cache.fetch(np.arange(len(x)), self.device)
        elif teacher_taps is not None:
            teacher_out, teacher_feats = self._guarded("teacher", x, lambda: self._live_teacher(inputs, teacher_taps))
        outs = []
        for student, taps in zip(self.stage.students, student_taps):
            with eval_mode(student):
                out = self._guarded("student", x, lambda: output_tensor(student(to_device(inputs, self.device)), "student"))
                outs.append((out, dict(taps.features)))
        self._check_outputs(outs[0][0], teacher_out)
        for k, (objective, (out, feats)) in enumerate(zip(self.stage.objectives, outs)):
            target = combine_peers([o for o, _ in outs], k, self.config.temperature) if self.stage.online else teacher_out
            objective.materialize(out, feats, target, teacher_feats)

    def _guarded(self, role: str, x: np.ndarray, run):
        try:
            return run()
        except EdgeKDError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise BadInput(f"the {role} cannot run on data x_train: a batch of shape {tuple(x.shape)} dtype {x.dtype} "
                           f"fails with: {first}") from None

    def _check_outputs(self, student_out: torch.Tensor, teacher_out: torch.Tensor | None) -> None:
        kind = "[batch, classes] logits" if self.data.task == "classification" else "[batch, dim] embeddings"
        for role, out in (("student", student_out), ("teacher", teacher_out)):
            if out is not None and out.dim() != 2:
                raise BadInput(f"the {role} outputs shape {tuple(out.shape)}; a '{self.data.task}' task needs {kind} "
                               "(wrap the model to pool or select its output)")
        if self.data.task != "classification":
            return
        classes = student_out.shape[1]
        y = self.data.y_train
        if y is not None and len(y) and int(y.max()) >= classes:
            raise BadInput(f"data y_train has labels up to {int(y.max())} but the student outputs {classes} classes")
        if teacher_out is not None and teacher_out.shape[1] != classes:
            raise BadInput(f"the student outputs {classes} classes but the teacher outputs {teacher_out.shape[1]}")

    # ----- checkpoints -----------------------------------------------------------------------
    def _fingerprint(self, step: _Step) -> dict[str, str]:
        """What a resumed run must share with the one that wrote the checkpoint."""
        skip = {"num_workers", "eval_batch_size", "cache_dir", "checkpoint_minutes"}
        config = {k: describe_setting(v) for k, v in vars(self.config).items() if k not in skip}
        shapes = [(k, tuple(v.shape)) for k, v in step.state_dict().items()]
        return {**config, "data": content_hash(self.data.x_train, self.data.y_train), "models": repr(shapes),
                "world_size": str(self.info.world_size)}

    def _save(self, payload: dict) -> None:
        if self.state_path is None:
            return
        self.last_checkpoint = _position(payload)
        if not self.info.is_writer:
            return
        with atomic_path(self.state_path) as tmp:
            torch.save(payload, tmp)

    def _load(self, fingerprint: dict) -> dict | None:
        if not (self.resume and self.state_path and self.state_path.is_file()):
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except NOT_INPUT_ERRORS:
            raise
        except Exception as err:  # torch raises many types for a corrupt file
            raise BadInput(f"{self.state_path}: unreadable training state ({type(err).__name__}); delete it to start over") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("fingerprint"), dict):
            raise BadInput(f"{self.state_path}: not an edgekd training state; delete it to start over")
        changed = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        if changed:
            raise BadInput(f"{self.state_path}: written by a different run (differs in: {', '.join(changed)}); "
                           "start without resume or use another out_dir")
        return state

    # ----- the loop ------------------------------------------------------------------------------
    def run(self) -> StageResult:
        stage, config = self.stage, self.config
        student_taps = [FeatureTaps(s, o.student_taps, role="student") for s, o in zip(stage.students, stage.objectives)]
        needs_teacher = stage.teacher is not None and not stage.online and any(o.needs_teacher for o in stage.objectives)
        use_cache = needs_teacher and stage.cache_root is not None and not config.augment
        live_taps = FeatureTaps(stage.teacher, self._teacher_taps(), role="teacher") if needs_teacher and not use_cache else None
        with contextlib.ExitStack() as active:
            for taps in [*student_taps, *([live_taps] if live_taps else [])]:
                active.enter_context(taps)
            if stage.teacher is not None:
                active.enter_context(eval_mode(stage.teacher, no_grad=False))
            cache = self._open_cache(self.data.x_train, self._teacher_taps()) if use_cache else None
            self._probe(student_taps, cache, live_taps)
            return self._fit(student_taps, cache, live_taps, self._val_teacher_outputs())

    def _fit(self, student_taps, cache: TeacherCache | None, live_taps: FeatureTaps | None, teacher_val) -> StageResult:
        stage, config, info = self.stage, self.config, self.info
        step_module = _Step(stage.students, stage.objectives, student_taps, stage.online, config.temperature)
        optimizer = torch.optim.AdamW(step_module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = len(self._epoch(0).batches)
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        self._step_limit = total_steps
        scheduler = _cosine_schedule(optimizer, total_steps=total_steps,
                                     warmup_steps=round(config.warmup_epochs * steps_per_epoch))
        fingerprint = self._fingerprint(step_module)
        history, start, best, bad_epochs = [], 0, {"epoch": -1, "value": None, "peer": 0, "state": None}, 0
        within = None  # the steps an interrupted epoch had done, from a mid-epoch checkpoint
        state = self._load(fingerprint)
        if state is not None:
            step_module.load_state_dict(state["modules"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            history, start, best, bad_epochs = state["history"], state["epoch"] + 1, state["best"], state["bad_epochs"]
            within, self.last_checkpoint = state.get("within"), _position(state)
            if state["finished"]:
                return self._result(step_module, history, best)
        trainer = step_module
        if info.enabled:
            trainer = DistributedDataParallel(step_module, find_unused_parameters=self._has_unused(step_module, cache, live_taps))

        def checkpoint(progress: dict) -> None:
            """Mid-epoch: the state after the last finished epoch's record, plus `progress` in this one."""
            self._save(self._payload(fingerprint, progress["epoch"] - 1, step_module, optimizer, scheduler, history,
                                     best, bad_epochs, finished=False, within=progress))

        stop = False
        with self._progress() as bar:
            task = bar.add_task(stage.title, total=(config.epochs - start) * steps_per_epoch, status="")
            for epoch in range(start, config.epochs):
                self._notify("on_epoch_start", epoch, [()] * len(stage.students))
                record = self._train_epoch(trainer, step_module, optimizer, scheduler, epoch, cache, live_taps, bar, task,
                                           done=within, checkpoint=checkpoint)
                within = None
                distributed.sync_buffers(step_module, info)
                peer_metrics = [self._validate(student, teacher_val) for student in stage.students]
                value, peer = self._monitored(peer_metrics)
                record["val"] = {**peer_metrics[peer], **({"peer": peer} if stage.online else {})}
                if stage.online:
                    record["val_peers"] = peer_metrics
                history.append(record)
                if self._improved(value, best["value"]):
                    best = {"epoch": epoch, "value": value, "peer": peer,
                            "state": copy.deepcopy(step_module.state_dict()) if config.restore_best else None}
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                stop = config.patience is not None and bad_epochs >= config.patience
                self._notify("on_epoch_end", epoch, [(metrics,) for metrics in peer_metrics])
                self._save(self._payload(fingerprint, epoch, step_module, optimizer, scheduler, history, best,
                                         bad_epochs, finished=False))
                bar.update(task, status=self._status(epoch, record))
                if stop or record["steps_done"] >= self._step_limit:
                    break
        if config.restore_best and best["state"] is not None:
            step_module.load_state_dict(best["state"])
        self._save(self._payload(fingerprint, len(history) - 1, step_module, optimizer, scheduler, history, best,
                                 bad_epochs, finished=True))
        return self._result(step_module, history, best)

    def _teacher_batch(self, index, inputs, cache: TeacherCache | None, live_taps: FeatureTaps | None):
        """(teacher outputs, teacher features) for a batch: from the cache, live, or none (online / baseline)."""
        if cache is not None:
            return cache.fetch(index, self.device)
        if live_taps is not None:
            return self._live_teacher(inputs, live_taps)
        return None, None

    def _has_unused(self, step_module: _Step, cache, live_taps) -> bool:
        """Whether a trained parameter gets no gradient (say, a Hugging Face pooler the loss never
        sees), found by one backward pass in eval mode; DistributedDataParallel must then look for them."""
        index = np.arange(min(2, len(self.data.x_train)))
        inputs = to_device((self.config.collate or default_collate)(self.data.x_train[index]), self.device)
        labels = None if self.data.y_train is None else torch.from_numpy(self.data.y_train[index]).to(self.device)
        with eval_mode(step_module, no_grad=False):
            loss, _ = step_module(inputs, labels, *self._teacher_batch(index, inputs, cache, live_taps))
            loss.backward()
        unused = any(p.grad is None for p in step_module.parameters() if p.requires_grad)
        step_module.zero_grad(set_to_none=True)
        return unused

    def _notify(self, hook: str, epoch: int, extra_args: list[tuple]) -> None:
        """Call `hook(epoch, model, *extra)` on every callback that has it, once per trained model."""
        for student, extra in zip(self.stage.students, extra_args):
            for callback in self.stage.callbacks:
                if hasattr(callback, hook):
                    getattr(callback, hook)(epoch, student, *extra)

    def _epoch(self, epoch: int) -> _Epoch:
        """Random batches of batch_size, augmented as they load; or the config's grouping (`batches`) of the
        samples as trained: the whole epoch augmented first (seeded by (seed, epoch), a stream no batch's
        seed takes): mix_text changes text lengths, and grouping by the original ones cut the padded tokens
        of random batches on fortunes only 2.0x instead of 3.4x. Under torchrun groups are dealt out batch
        by batch."""
        config, info, x = self.config, self.info, self.data.x_train
        augment = shift_augment if config.augment is True else (config.augment or None)
        n = len(x)
        if config.batches is None:
            return _Epoch(x, distributed.epoch_batches(n, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                                                       info=info), augment)
        if augment is not None:
            x = augment(x, np.random.default_rng([config.seed, epoch, SEED_LIMIT]))
        batches = [np.asarray(b) for b in config.batches(x, batch_size=config.batch_size, seed=config.seed, epoch=epoch)]
        counts = np.bincount(np.concatenate(batches), minlength=n) if batches and all(map(len, batches)) else None
        if counts is None or len(counts) != n or (counts != 1).any():
            raise BadInput(f"distill config key 'batches': {describe_setting(config.batches)} must return non-empty "
                           f"index batches holding each of the {n} training samples once")
        if info.enabled:  # every rank takes as many steps: the epoch's first batches repeat as padding
            padded = -(-len(batches) // info.world_size) * info.world_size
            batches = [batches[i % len(batches)] for i in range(info.rank, padded, info.world_size)]
        return _Epoch(x, batches, None)

    def _train_epoch(self, trainer, step_module, optimizer, scheduler, epoch, cache, live_taps, bar, task, *,
                     done: dict | None, checkpoint) -> dict:
        """One epoch, from the step a mid-epoch checkpoint (`done`) stopped at; `checkpoint(progress)` writes one."""
        config, info = self.config, self.info
        samples = self._epoch(epoch)
        batches = samples.batches
        done = done or {"steps": 0, "loss": torch.zeros((), dtype=torch.float64), "terms": {}, "step_time": 0.0}
        step_module.train()
        sums: dict[str, torch.Tensor] = {name: value.to(self.device) for name, value in done["terms"].items()}
        total = done["loss"].to(self.device)
        step_time = done["step_time"]
        loader = _iterate(_Batches(samples, self.data.y_train, config, epoch), config.num_workers, done["steps"])
        saved = started = time.perf_counter()
        ran = len(batches)
        for step, (index, inputs, labels) in enumerate(loader, start=done["steps"]):
            inputs = to_device(inputs, self.device)
            labels = None if labels is None else labels.to(self.device)
            loss, values = trainer(inputs, labels, *self._teacher_batch(index, inputs, cache, live_taps))
            if not distributed.all_finite(loss, info):
                raise self._diverged(epoch, step, loss, values)
            optimizer.zero_grad(set_to_none=True)
            # Grouped batches vary in size (text: many short texts or few long ones); the loss, a mean over the
            # batch, then counts len/batch_size, so each sample weighs what it would in random batches.
            (loss * (len(index) / config.batch_size if config.batches is not None else 1.0)).backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(step_module.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            now = time.perf_counter()
            step_time, started = step_time + now - started, now  # batch loading included
            total += loss.detach()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.advance(task)
            if epoch * len(batches) + step + 1 >= self._step_limit:  # config.max_steps reached
                ran = step + 1
                break
            if self.state_path and step + 1 < len(batches) and now - saved >= 60 * config.checkpoint_minutes:
                checkpoint({"epoch": epoch, "steps": step + 1, "loss": total.cpu(), "step_time": step_time,
                            "terms": {name: value.cpu() for name, value in sums.items()}})
                saved = started = time.perf_counter()  # the write is not a step's time
        means = distributed.mean_over_ranks({"loss": float(total) / ran,
                                             **{k: float(v) / ran for k, v in sums.items()}}, info)
        return {"epoch": epoch, "loss": means.pop("loss"), "terms": means, "lr": optimizer.param_groups[0]["lr"],
                "steps": ran, "steps_done": epoch * len(batches) + ran, "step_ms": 1000 * step_time / ran}

    def _diverged(self, epoch, step, loss, values) -> TrainingDiverged:
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())
        kept = (f"the last good checkpoint ({self.last_checkpoint}) is kept at {self.state_path}"
                if self.last_checkpoint else "no checkpoint was written yet")
        return TrainingDiverged(f"{self.stage.title}: loss became {float(loss.detach())} at epoch {epoch} step {step} ({terms}); "
                                f"training stopped and {kept}; lower lr or set grad_clip")

    def _validate(self, student: nn.Module, teacher_val) -> dict:
        outputs = predict(student, self.data.x_val, collate=self.config.collate, batch_size=self.config.eval_batch_size,
                          role="student")
        return self.metric.compute(outputs, self.data.y_val, teacher_val)

    def _monitor_key(self, metrics: dict) -> str | None:
        """config.monitor, else the task's primary metric, else teacher agreement (no labels), else None."""
        key = self.config.monitor or self.metric.primary
        if key not in metrics:
            raise BadInput(f"distill config key 'monitor': '{key}' is not a validation metric "
                           f"(available: {', '.join(metrics)})")
        if metrics[key] is None and self.config.monitor is None:
            key = "teacher_agreement" if metrics.get("teacher_agreement") is not None else None
        return key

    def _higher_is_better(self, key: str) -> bool:
        return key == "teacher_agreement" or self.metric.higher_is_better

    def _monitored(self, peer_metrics: list[dict]) -> tuple[float | None, int]:
        """The monitored value, oriented so that higher is better, and the peer that holds it."""
        key = self._monitor_key(peer_metrics[0])
        if key is None:
            return None, 0
        sign = 1.0 if self._higher_is_better(key) else -1.0
        values = [sign * m[key] for m in peer_metrics]
        peer = values.index(max(values))
        return values[peer], peer

    def _improved(self, value, best) -> bool:
        if value is None or best is None:
            return True  # nothing to compare by: the latest epoch is the best one
        return value > best + self.config.min_delta

    def _payload(self, fingerprint, epoch, step_module, optimizer, scheduler, history, best, bad_epochs, *, finished,
                 within: dict | None = None):
        """`epoch`: the last finished one; `within`: the steps done since (a mid-epoch checkpoint)."""
        return {"format": FORMAT, "fingerprint": fingerprint, "epoch": epoch, "finished": finished, "within": within,
                "modules": step_module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "history": history, "best": best, "bad_epochs": bad_epochs}

    def _result(self, step_module: _Step, history: list[dict], best: dict) -> StageResult:
        best_epoch = best["epoch"] if best["epoch"] >= 0 else len(history) - 1
        if not self.config.restore_best:
            best_epoch = len(history) - 1
        record = history[best_epoch] if history else {"val": {}}
        peer = record["val"].get("peer", 0) if self.stage.online else 0
        model = step_module.students[peer]
        model.eval()
        return StageResult(model, history, best_epoch, dict(record["val"]))

    def _progress(self) -> Progress:
        # stderr, like every progress line: stdout carries results only (and stays pipeable)
        return Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), disable=not self.show_progress, transient=False,
                        console=Console(stderr=True))

    def _status(self, epoch: int, record: dict) -> str:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record["val"].items() if isinstance(v, float))
        return f"epoch {epoch + 1}/{self.config.epochs} loss {record['loss']:.4f} {shown}"
