"""The distillation recipe (`DistillConfig`, `LossTerm`) and what a run hands back (`DistillResult`).

Plain dataclasses so a recipe can come from YAML, a CLI or Python alike; `validate_config`
turns an impossible value into a `BadInput` that names the key, before any training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from edgekd.data import SEED_LIMIT
from edgekd.distill.losses import LOSSES
from edgekd.errors import BadInput, close_matches

MODES = ("offline", "self", "online", "multistage")

# Upper bounds of a run, checked up front: past them a run never ends or overflows late.
MAX_EPOCHS = 10_000
"""Most epochs (also patience and warm-up): far past any distillation schedule, short of forever."""
MAX_STEPS = 10_000_000
"""Most optimizer steps a run may be bounded to: weeks of training on a CPU; above it is a typo."""
MAX_LR = 10.0
"""Largest learning rate: AdamW and SGD diverge long before it; above it is a typo."""
MAX_TEMPERATURE = 100.0
"""Largest KD temperature: soft targets are flat long before it, and the loss scales by T^2."""
MAX_LOSS_WEIGHT = 1e6
"""Largest loss-term weight: room for attention transfer's beta of 1000, far below float32's 3e38."""
MAX_WORKERS = 64
"""Most data-loader worker processes: each is a process; more only floods the host."""
MAX_PEERS = 16
"""Most online-mode peers: each is a full copy of the student in memory."""
MAX_GENERATIONS = 100
"""Most self-distillation generations: each is a whole training run."""
CALLABLES = ("collate", "batches")
"""DistillConfig fields that hold code: set by a model family or in Python, never from a recipe's data."""


@dataclass
class LossTerm:
    """One distillation term beyond the recipe's response KD, looked up by `name` in `LOSSES`.

    A layer of None means the model's output for output-level terms (response, rkd_*, cosine,
    mse) and "every block, mapped by proportional depth" for feature terms (fitnets, attention).
    A layer name may end in `#i` to take element i of a module's tuple output (e.g. the
    attention probabilities a Hugging Face self-attention module returns second).
    """

    name: str
    weight: float = 1.0
    student_layer: str | None = None
    teacher_layer: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Hyperparameters of one distillation run; the defaults are a sound start for edge CNNs.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labeled) + sum(extra terms).
    """

    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimizer steps (a smoke run of a long recipe), None: epochs
    batch_size: int = 64  # per process under torchrun (DistributedSampler convention)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.9
    kd: bool = True  # False: the undistilled baseline, hard-label CE on labeled samples only
    response: bool = True  # the logit KD term; False for pure feature / embedding distillation
    losses: list[LossTerm] = field(default_factory=list)
    mode: str = "offline"  # offline | self | online | multistage
    cache: bool = True  # offline teacher cache (ignored for training batches when augmenting)
    augment: bool | Callable[[np.ndarray, np.random.Generator], np.ndarray] = False
    patience: int | None = 8  # epochs without improvement before stopping; None: never stop early
    seed: int = 0
    num_workers: int = 0
    collate: Callable[[np.ndarray], Any] | None = None  # numpy batch -> model input
    # How an epoch's training samples group into batches: batches(x_train, batch_size=, seed=, epoch=) ->
    # index arrays holding every sample once, the same for the same (seed, epoch). None: random batches of
    # batch_size. A family supplies it where batch cost varies by sample (text: edgekd.hf.text.TokenBudgetBatches).
    batches: Callable[..., list[np.ndarray]] | None = None
    layer_map: dict[str, str] = field(default_factory=dict)  # student layer -> teacher layer
    warmup_epochs: float = 0.0  # linear learning-rate warm-up before the cosine decay
    grad_clip: float | None = None  # max global gradient norm
    min_delta: float = 0.0  # smallest change of the monitored metric that counts as better
    monitor: str | None = None  # validation metric for early stopping; None: the task's primary metric
    restore_best: bool = True  # hand back the best validation epoch's weights, not the last
    eval_batch_size: int = 256
    cache_dir: str | Path | None = None  # None: <out_dir>/teacher_cache, else ~/.cache/edgekd/teacher_cache
    peers: int = 2  # online mode: how many peers learn from each other
    generations: int = 1  # self mode: born-again generations, each teaching the next
    deterministic: bool = True  # torch.use_deterministic_algorithms for the run (warn-only)
    checkpoint_minutes: float = 10.0  # also checkpoint within an epoch at most this often (0: every step)


@dataclass
class DistillResult:
    model: nn.Module  # the trained student, best validation weights when restore_best
    history: list[dict]  # one record per epoch: losses, lr, validation metrics, step timing
    best_epoch: int  # 0-based epoch whose weights `model` holds
    metrics: dict  # validation metrics at best_epoch (task metric, teacher_agreement)
    stages: list["DistillResult"] = field(default_factory=list)  # earlier stages (assistant, generations)


def describe_setting(value) -> str:
    """A config value as text that is the same in every process, for resume fingerprints and cache keys:
    a function or class by its qualified name, an object by its own __repr__ where its class has one, else
    by its class (the default repr holds a memory address, which made every resumed text run look new)."""
    if hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if type(value).__repr__ is object.__repr__:
        return f"{type(value).__module__}.{type(value).__qualname__}"
    return repr(value)


def validate_config(config: DistillConfig, loss_names, *, source: str = "distill config") -> None:
    """Reject impossible values up front, naming the key."""

    def _require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise BadInput(f"{source}: key '{key}': {message}")

    for key in ("kd", "response", "cache", "restore_best", "deterministic"):
        _require(isinstance(getattr(config, key), bool), key, f"must be true or false, got {getattr(config, key)!r}")
    _require(isinstance(config.seed, int) and not isinstance(config.seed, bool) and 0 <= config.seed < SEED_LIMIT,
             "seed", f"must be an integer >= 0 and below 2**32, got {config.seed!r}")
    _require(config.monitor is None or isinstance(config.monitor, str), "monitor", f"must be a metric name, got {config.monitor!r}")
    _require(config.cache_dir is None or isinstance(config.cache_dir, (str, Path)), "cache_dir",
             f"must be a path, got {config.cache_dir!r}")
    _require(isinstance(config.losses, list), "losses", "must be a list of loss terms")
    positive_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    _require(positive_int(config.epochs) and config.epochs <= MAX_EPOCHS, "epochs",
             f"must be an integer >= 1 and at most {MAX_EPOCHS}, got {config.epochs!r}")
    _require(config.max_steps is None or (positive_int(config.max_steps) and config.max_steps <= MAX_STEPS), "max_steps",
             f"must be None or an integer >= 1 and at most {MAX_STEPS}, got {config.max_steps!r}")
    _require(positive_int(config.batch_size), "batch_size", f"must be an integer >= 1, got {config.batch_size!r}")
    _require(positive_int(config.eval_batch_size), "eval_batch_size", f"must be an integer >= 1, got {config.eval_batch_size!r}")
    _require(finite(config.lr) and 0 < config.lr <= MAX_LR, "lr",
             f"must be a positive number at most {MAX_LR:g}, got {config.lr!r}")
    _require(finite(config.weight_decay) and config.weight_decay >= 0, "weight_decay", f"must be >= 0, got {config.weight_decay!r}")
    _require(finite(config.temperature) and 0 < config.temperature <= MAX_TEMPERATURE, "temperature",
             f"must be > 0 and at most {MAX_TEMPERATURE:g}, got {config.temperature!r}")
    _require(finite(config.alpha) and 0 <= config.alpha <= 1, "alpha", f"must be in [0, 1], got {config.alpha!r}")
    _require(config.mode in MODES, "mode", f"must be one of {', '.join(MODES)}, got {config.mode!r}")
    _require(config.patience is None or (positive_int(config.patience) and config.patience <= MAX_EPOCHS), "patience",
             f"must be None or an integer >= 1 and at most {MAX_EPOCHS}, got {config.patience!r}")
    _require(isinstance(config.num_workers, int) and not isinstance(config.num_workers, bool)
             and 0 <= config.num_workers <= MAX_WORKERS, "num_workers",
             f"must be an integer >= 0 and at most {MAX_WORKERS}, got {config.num_workers!r}")
    _require(finite(config.warmup_epochs) and 0 <= config.warmup_epochs < config.epochs, "warmup_epochs",
             f"must be in [0, epochs), got {config.warmup_epochs!r}")
    _require(config.grad_clip is None or (finite(config.grad_clip) and config.grad_clip > 0), "grad_clip",
             f"must be None or > 0, got {config.grad_clip!r}")
    _require(finite(config.min_delta) and config.min_delta >= 0, "min_delta", f"must be >= 0, got {config.min_delta!r}")
    _require(positive_int(config.peers) and 2 <= config.peers <= MAX_PEERS, "peers",
             f"online mode needs at least 2 peers and at most {MAX_PEERS}, got {config.peers!r}")
    _require(positive_int(config.generations) and config.generations <= MAX_GENERATIONS, "generations",
             f"must be an integer >= 1 and at most {MAX_GENERATIONS}, got {config.generations!r}")
    _require(config.collate is None or callable(config.collate), "collate", "must be a callable (numpy batch -> model input)")
    _require(config.batches is None or callable(config.batches), "batches",
             "must be None or a callable (x, batch_size=, seed=, epoch=) -> index batches")
    _require(finite(config.checkpoint_minutes) and config.checkpoint_minutes >= 0, "checkpoint_minutes",
             f"must be a number >= 0, got {config.checkpoint_minutes!r}")
    _require(isinstance(config.augment, bool) or callable(config.augment), "augment", "must be a bool or a callable(x, rng) -> x")
    _require(isinstance(config.layer_map, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in config.layer_map.items()),
             "layer_map", "must map student layer names to teacher layer names (str -> str)")
    for i, term in enumerate(config.losses):
        key = f"losses[{i}]"
        _require(isinstance(term, LossTerm), key, f"must be a LossTerm, got {type(term).__name__}")
        _require(term.name in loss_names, f"{key}.name", f"unknown loss '{term.name}' ({close_matches(term.name, sorted(loss_names))})")
        _require(finite(term.weight) and 0 <= term.weight <= MAX_LOSS_WEIGHT, f"{key}.weight",
                 f"must be a finite number >= 0 and at most {MAX_LOSS_WEIGHT:g}, got {term.weight!r}")
        _require(isinstance(term.params, dict), f"{key}.params", "must be a mapping")


def config_from_mapping(mapping, *, source: str = "recipe") -> DistillConfig:
    """A `DistillConfig` from plain data (e.g. a YAML recipe's distill section); unknown keys and
    bad values are BadInput naming `source` and the key. Callables (collate, batches) cannot come from data."""

    if not isinstance(mapping, dict):
        raise BadInput(f"{source}: the distill settings must be a mapping, got {type(mapping).__name__}")
    allowed = sorted(f.name for f in fields(DistillConfig) if f.name not in CALLABLES)
    term_keys = sorted(f.name for f in fields(LossTerm))
    for key in mapping:
        if key not in allowed:
            raise BadInput(f"{source}: unknown key '{key}' ({close_matches(str(key), allowed)})")
    values = dict(mapping)
    losses = values.get("losses", [])
    if not isinstance(losses, list):
        raise BadInput(f"{source}: key 'losses' must be a list of {{name, weight, student_layer, teacher_layer, params}}")
    terms = []
    for i, item in enumerate(losses):
        if not isinstance(item, dict) or "name" not in item:
            raise BadInput(f"{source}: key 'losses[{i}]' must be a mapping with a 'name'")
        for key in item:
            if key not in term_keys:
                raise BadInput(f"{source}: unknown key 'losses[{i}].{key}' ({close_matches(str(key), term_keys)})")
        terms.append(LossTerm(**item))
    values["losses"] = terms
    config = DistillConfig(**values)
    validate_config(config, LOSSES, source=source)
    return config
