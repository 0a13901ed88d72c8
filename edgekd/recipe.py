"""The compress recipe: every setting of a run in one YAML file, validated strictly.

Command-line flags override the recipe; the resolved recipe is stored in the run's manifest
so the run can be reproduced exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekd.errors import BadInput
from edgekd.targets import read_yaml, validation_message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PruneSection(_Section):
    importance: Literal["magnitude", "bn_scale", "taylor"] = "magnitude"
    global_pruning: bool = False
    steps: int = Field(default=1, ge=1)
    recovery_epochs: int = Field(default=0, ge=0)
    ignore_layers: list[str] = Field(default_factory=list)


class QuantSection(_Section):
    epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=5e-4, gt=0)
    warmup_epochs: int = Field(default=1, ge=0)
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    calibration_samples: int = Field(default=256, ge=1)
    latency_aware: bool = True


class BenchSection(_Section):
    warmup: int = Field(default=20, ge=0)
    time_budget_s: float = Field(default=2.0, gt=0)
    min_iterations: int = Field(default=100, ge=10)
    ablation_time_budget_s: float = Field(default=1.0, gt=0)


class Recipe(_Section):
    teacher: str = "edgekd.zoo:digits_teacher"
    student: str = "prune:0.5"
    data: str = "digits16"
    targets: list[str] = Field(default_factory=lambda: ["x86-cpu-openvino", "x86-cpu-onnxruntime", "intel-npu-core-ultra"])
    out: str = "runs/demo"
    seed: int = 0
    formats: list[Literal["onnx", "openvino"]] = Field(default_factory=lambda: ["onnx", "openvino"])
    labeled_fraction: float = Field(default=1.0, gt=0, le=1)
    # edgekd.distill.DistillConfig fields (epochs, lr, temperature, alpha, losses, mode, ...),
    # validated by the distillation stage itself so the recipe and the API never drift apart.
    distill: dict = Field(default_factory=lambda: {"epochs": 12, "patience": None})  # the demo: about a minute
    prune: PruneSection = PruneSection()
    quant: QuantSection = QuantSection()
    bench: BenchSection = BenchSection()

    @field_validator("student")
    @classmethod
    def _student_spec(cls, spec: str) -> str:
        """Checked here, before a run directory is touched, not when the prune step reaches it."""
        kind, _, value = spec.partition(":")
        if kind == "prune":
            try:
                ratio = float(value)
            except ValueError:
                ratio = float("nan")
            if not 0 < ratio < 1:
                raise ValueError(f"prune:RATIO needs RATIO in (0, 1), got '{value}'")
        elif kind == "layers" and (not value.isdigit() or int(value) < 1):
            raise ValueError(f"layers:N needs a whole number N >= 1, got '{value}'")
        return spec


def load_recipe(path: str | Path | None, *, distill_epochs: int | None = None, quant_epochs: int | None = None,
                **overrides) -> Recipe:
    """The recipe at `path` (or the embedded default) with non-None `overrides` applied
    (top-level keys, plus the two epoch counts users most often change from the command line)."""
    data: dict = {}
    source = "the default recipe"
    if path is not None:
        source = str(path)
        raw = read_yaml(Path(path))
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadInput(f"{path}: a recipe must be a YAML mapping")
        data = raw
    data = {**data, **{k: v for k, v in overrides.items() if v not in (None, [], ())}}
    if distill_epochs is not None:
        data["distill"] = {**(data.get("distill") or {}), "epochs": distill_epochs}
    if quant_epochs is not None:
        data["quant"] = {**(data.get("quant") or {}), "epochs": quant_epochs}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise BadInput(validation_message(source, err)) from None
    from edgekd.distill import config_from_mapping

    flag = " (epochs from --epochs)" if distill_epochs is not None else ""
    config_from_mapping(recipe.distill, source=f"{source}: distill{flag}")  # fail before any work starts
    return recipe
