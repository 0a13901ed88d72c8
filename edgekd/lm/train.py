"""Training a causal-LM student: token-level KD on the cached teacher top-k blended with next-token
cross-entropy on the real text, plus sequence-level KD data (teacher generations) trained with CE.

Runs are bounded (`max_steps`), deterministic (the same config, data and initial weights give bit-identical
weights on the same machine) and resumable: a checkpoint holding the model, optimizer, scheduler, step and
RNG state is written atomically every `checkpoint_minutes` and at the end, and a resumed run ends with exactly
the weights of an uninterrupted one. Batches are a pure function of (seed, step): step s takes the next
`batch_size` rows of a stream of per-epoch permutations of the data, so resuming needs no sampler state; the
torch RNG state (dropout, if the student has any) is checkpointed with the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.distill.trainer import TrainingDiverged
from edgekd.errors import NOT_INPUT_ERRORS, BadInput
from edgekd.io import atomic_path
from edgekd.lm.losses import DIVERGENCES, causal_logits, check_token_ids, next_token_ce, topk_kd_loss
from edgekd.lm.topk_cache import MAX_K, TopK

CHECKPOINT = "lm_train.pt"
FORMAT = "edgekd.lm.train/1"
SEED_LIMIT = 2**32
# Settings that do not change the weights a run ends with, so a resumed run may change them.
NOT_IN_RESULT = ("checkpoint_minutes", "log_every")


@dataclass
class LMTrainConfig:
    """Settings of one student training run.

    lr 2e-4: the student starts from the teacher's own (pretrained) layers, so this is fine-tuning, where
    AdamW on ~100M-parameter LMs is usually run at 1e-4..5e-4, not pretraining (~1e-3 and up, which would
    wash out the inherited weights in a few hundred steps); 2e-4 sits low in that range because KD targets
    are soft and the runs are short. alpha weighs the KD loss against the CE on the real text; temperature
    must be the teacher cache's; top_k is the k that cache was built with.
    """

    max_steps: int = 200
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    temperature: float = 1.0
    alpha: float = 0.5
    divergence: str = "forward"
    top_k: int = 32
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 10

    def validate(self) -> "LMTrainConfig":
        """self, or BadInput naming the first key out of range."""
        integers = {"max_steps": (1, 10**8), "batch_size": (1, 4096), "warmup_steps": (0, 10**8),
                    "top_k": (1, MAX_K), "seed": (0, SEED_LIMIT - 1), "log_every": (1, 10**8)}
        for key, (low, high) in integers.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise BadInput(f"lm training config: '{key}' must be an integer in [{low}, {high}], got {value!r}")
        numbers = {"lr": (0.0, 1.0, False), "weight_decay": (0.0, 1.0, True), "grad_clip": (0.0, 1e6, False),
                   "temperature": (0.0, 100.0, False), "alpha": (0.0, 1.0, True),
                   "checkpoint_minutes": (0.0, 1e6, True)}
        for key, (low, high, low_allowed) in numbers.items():
            value = getattr(self, key)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not (low <= value if low_allowed else low < value) or value > high):
                bound = "[" if low_allowed else "("
                raise BadInput(f"lm training config: '{key}' must be a number in {bound}{low}, {high}], got {value!r}")
        if self.divergence not in DIVERGENCES:
            raise BadInput(f"lm training config: 'divergence' must be one of {', '.join(DIVERGENCES)}, "
                           f"got {self.divergence!r}")
        return self


@dataclass
class LMTrainResult:
    """The trained student (eval mode) and its history: one entry per `log_every` steps and the last step,
    {step, loss, kd, ce, lr}, the losses averaged over those steps (kd None when no KD term was computed)."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)


def _lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay towards 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _batch_rows(seed: int, step: int, batch_size: int, pool: int) -> np.ndarray:
    """Rows of step `step`: positions [step * b, (step + 1) * b) of the stream of permutations of range(pool),
    epoch e's permutation drawn from (seed, e)."""
    first = step * batch_size
    epoch, offset = divmod(first, pool)
    rows: list[np.ndarray] = []
    while sum(map(len, rows)) < batch_size:
        permutation = np.random.default_rng([seed, epoch]).permutation(pool)
        rows.append(permutation[offset:offset + batch_size - sum(map(len, rows))])
        epoch, offset = epoch + 1, 0
    return np.concatenate(rows)


def _pool(windows, sequences, topk: TopK | None, config: LMTrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens [m, L], target mask [m, L] (token t is a CE target), how many leading rows are windows)."""
    parts = []
    if windows is not None:
        windows = np.asarray(windows)
        if windows.ndim != 2 or windows.dtype.kind not in "iu" or windows.size == 0 or windows.shape[1] < 2:
            raise BadInput(f"windows must be a non-empty integer array [n, seq_len >= 2], got {windows.dtype} "
                           f"{windows.shape}")
        mask = np.ones(windows.shape, dtype=bool)
        mask[:, 0] = False  # the first token has no context to be predicted from
        parts.append((windows.astype(np.int64), mask))
    if sequences is not None:
        if not (isinstance(sequences, (tuple, list)) and len(sequences) == 2):
            raise BadInput("sequences must be (tokens, loss_mask), as Generations.training_sequences returns")
        tokens, mask = (np.asarray(array) for array in sequences)
        if (tokens.ndim != 2 or tokens.dtype.kind not in "iu" or tokens.size == 0 or mask.shape != tokens.shape
                or mask.dtype != bool):
            raise BadInput(f"sequences must be int tokens [m, L] with a bool loss mask of the same shape, got "
                           f"{tokens.dtype} {tokens.shape} and {mask.dtype} {mask.shape}")
        if parts and tokens.shape[1] != parts[0][0].shape[1]:
            raise BadInput(f"sequences are {tokens.shape[1]} tokens long and windows {parts[0][0].shape[1]}: "
                           f"make them with training_sequences(max_len={parts[0][0].shape[1]})")
        parts.append((tokens.astype(np.int64), mask))
    if not parts:
        raise BadInput("nothing to train on: give windows, sequences or both")
    n_windows = len(parts[0][0]) if windows is not None else 0
    if topk is not None:
        if windows is None or topk.indices.shape[:2] != windows.shape:
            raise BadInput(f"teacher_topk covers {topk.indices.shape[:2]} positions, the windows are "
                           f"{None if windows is None else windows.shape}: build it over these windows")
        if topk.temperature != config.temperature or topk.k != config.top_k:
            raise BadInput(f"teacher_topk was built with k={topk.k}, temperature={topk.temperature}; the config "
                           f"says top_k={config.top_k}, temperature={config.temperature}")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), n_windows


def _identity(config: LMTrainConfig, tokens: np.ndarray, mask: np.ndarray, n_windows: int, topk: TopK | None) -> dict:
    """What a checkpoint must match to be resumed: the settings that shape the result, and the data."""
    digest = hashlib.sha256(f"{tokens.shape}|{n_windows}".encode())
    digest.update(tokens.tobytes())
    digest.update(mask.tobytes())
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_RESULT}
    return {"config": settings, "data_sha256": digest.hexdigest(),
            "teacher_topk": None if topk is None else topk.directory.name}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: decaying norm gains and biases towards 0 only fights the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _load_checkpoint(path: Path, identity: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise BadInput(f"{path}: not a readable LM training checkpoint ({type(err).__name__}); delete it to "
                       "start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{path}: not an edgekd LM training checkpoint (no '{FORMAT}' marker)")
    for key, value in identity.items():
        if state.get("identity", {}).get(key) != value:
            raise BadInput(f"{path}: written by a run with another {key} ({state.get('identity', {}).get(key)!r} vs "
                           f"{value!r}); resume only the same run, or use a new out_dir")
    return state


def train_lm(student: nn.Module, windows, *, config: LMTrainConfig, teacher_topk: TopK | None = None,
             sequences=None, out_dir, resume: bool = False,
             progress: Callable[[int, int], None] | None = None) -> LMTrainResult:
    """Train `student` in place for `config.max_steps` steps and return it with its history.

    Each step's loss is alpha * topk_kd_loss + (1 - alpha) * next-token CE on the batch's windows (int
    [n, seq_len]) when `teacher_topk` (built over these windows) is given, else the plain CE: the no-KD
    baseline. `sequences` (tokens, loss_mask) from Generations.training_sequences are mixed into the same
    row pool (or are all of it when `windows` is None) and trained with CE on their masked tokens only.
    `resume` continues from `out_dir`'s checkpoint when there is one (without, a run starts over and replaces
    it). `progress(step, max_steps)` after each step, once any due checkpoint is written.
    """
    config.validate()
    tokens, target_mask, n_windows = _pool(windows, sequences, teacher_topk, config)
    check_token_ids(student, tokens, "windows and sequences")
    identity = _identity(config, tokens, target_mask, n_windows, teacher_topk)
    path = Path(out_dir) / CHECKPOINT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        optimizer = torch.optim.AdamW(_param_groups(student, config.weight_decay), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(_lr_factor, warmup=config.warmup_steps, total=config.max_steps))
        step, history, pending = 0, [], {"steps": 0, "loss": 0.0, "ce": 0.0, "kd": 0.0, "kd_steps": 0}
        if resume and path.is_file():
            state = _load_checkpoint(path, identity)
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            step, history, pending = state["step"], state["history"], state["pending"]

        def save() -> None:
            payload = {"format": FORMAT, "identity": identity, "step": step, "history": history, "pending": pending,
                       "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)

        student.train()
        last_save = time.monotonic()
        while step < config.max_steps:
            rows = _batch_rows(config.seed, step, config.batch_size, len(tokens))
            ids = torch.from_numpy(tokens[rows])
            logits = causal_logits(student, ids)
            ce = next_token_ce(logits, ids, torch.from_numpy(target_mask[rows]))
            kd_rows = rows < n_windows
            kd = None
            if teacher_topk is not None and kd_rows.any():
                kd_index = torch.from_numpy(kd_rows)
                kd = topk_kd_loss(logits[kd_index], teacher_topk.batch(rows[kd_rows]),
                                  temperature=config.temperature, divergence=config.divergence)
                loss = config.alpha * kd + (1.0 - config.alpha) * ce
            else:
                loss = ce
            if not bool(torch.isfinite(loss)):
                raise TrainingDiverged(f"lm training: loss became {float(loss)} at step {step} (ce {float(ce)}, kd "
                                       f"{None if kd is None else float(kd)}); lower lr or grad_clip, then resume")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            pending["steps"] += 1
            pending["loss"] += loss.item()
            pending["ce"] += ce.item()
            if kd is not None:
                pending["kd"] += kd.item()
                pending["kd_steps"] += 1
            if step % config.log_every == 0 or step == config.max_steps:
                count = pending["steps"]
                history.append({"step": step, "loss": pending["loss"] / count, "ce": pending["ce"] / count,
                                "kd": pending["kd"] / pending["kd_steps"] if pending["kd_steps"] else None, "lr": lr})
                pending = {"steps": 0, "loss": 0.0, "ce": 0.0, "kd": 0.0, "kd_steps": 0}
            if step == config.max_steps or time.monotonic() - last_save >= config.checkpoint_minutes * 60:
                save()
                last_save = time.monotonic()
            if progress is not None:
                progress(step, config.max_steps)
    return LMTrainResult(student.eval(), history)
