"""What every step of a run shares: the recipe, data, teacher, model family, target plan and run
state, and the two records the steps pass along (a trained `Variant`, an exported `Artifact`)."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from edgekd.checkpoint import LoadedModel
from edgekd.data import Dataset
from edgekd.families import ModelFamily
from edgekd.recipe import Recipe
from edgekd.runstate import RunState
from edgekd.steps.plan import TargetPlan
from edgekd.targets import Target


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


def recipe_hash(recipe: Recipe) -> str:
    """What must not change for --resume; trusting another factory changes no result."""
    return hashlib.sha256(json.dumps(recipe.model_dump(exclude={"out", "trust_factories"}),
                                     sort_keys=True).encode()).hexdigest()


def targets_hash(targets: list) -> str:
    """The target profiles as the run reads them (a profile file edited between an interrupted run and its
    --resume would judge the old budget's choice by the new budget)."""
    return hashlib.sha256(json.dumps([t.model_dump(mode="json") for t in targets], sort_keys=True).encode()).hexdigest()


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


@dataclass
class Context:
    recipe: Recipe
    data: Dataset
    teacher: LoadedModel
    family: ModelFamily
    plan: TargetPlan
    run: RunState
    console: Console
    resume: bool = False


def stored(ctx: Context, stage: str, build) -> Variant:
    """A variant built once and kept in the run directory (reloaded on --resume)."""
    holder: dict = {}

    def build_and_keep():
        variant = build()
        holder["v"] = variant
        return variant.model, variant.ref, variant.transforms, variant.info

    model, transforms, info = ctx.run.model(stage, build_and_keep)
    ref = holder["v"].ref if "v" in holder else ctx.teacher.ref
    return Variant(model, ref, transforms, info)
