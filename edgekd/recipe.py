"""The compress recipe: every setting of a run in one YAML file, validated strictly.

Command-line flags override the recipe; the resolved recipe is stored in the run's manifest
so the run can be reproduced exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekd.bench.core import MAX_RUNS, MAX_TIME_BUDGET_S
from edgekd.data import SEED_LIMIT, check_data_ref
from edgekd.distill.config import MAX_EPOCHS, MAX_LR, config_from_mapping
from edgekd.errors import BadInput
from edgekd.targets import read_yaml, validation_message

MAX_PRUNE_STEPS = 100
"""Most iterative pruning steps: past a hundred each removes under 1% of the width, a typo not a schedule."""


class _Section(BaseModel):
    """Every number must be finite: `.inf` epochs or time budgets would never end."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PruneSection(_Section):
    importance: Literal["magnitude", "bn_scale", "taylor"] = "magnitude"
    global_pruning: bool = False
    steps: int = Field(default=1, ge=1, le=MAX_PRUNE_STEPS)
    recovery_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    ignore_layers: list[str] = Field(default_factory=list)


class QuantSection(_Section):
    epochs: int = Field(default=3, ge=0, le=MAX_EPOCHS)
    lr: float = Field(default=5e-4, gt=0, le=MAX_LR)
    warmup_epochs: int = Field(default=1, ge=0, le=MAX_EPOCHS)
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    calibration_samples: int = Field(default=256, ge=1)
    latency_aware: bool = True


class BenchSection(_Section):
    warmup: int = Field(default=20, ge=0, le=MAX_RUNS)
    time_budget_s: float = Field(default=2.0, gt=0, le=MAX_TIME_BUDGET_S)
    min_iterations: int = Field(default=100, ge=10, le=MAX_RUNS)
    ablation_time_budget_s: float = Field(default=1.0, gt=0, le=MAX_TIME_BUDGET_S)


class Recipe(_Section):
    teacher: str = "edgekd.zoo:digits_teacher"
    student: str = "prune:0.5"
    data: str = "digits16"
    targets: list[str] = Field(default_factory=lambda: ["x86-cpu-openvino", "x86-cpu-onnxruntime", "intel-npu-core-ultra"])
    out: str = "runs/demo"
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)
    formats: list[Literal["onnx", "openvino"]] = Field(default_factory=lambda: ["onnx", "openvino"], min_length=1)
    labeled_fraction: float = Field(default=1.0, gt=0, le=1)
    # Factories a checkpoint of this run may name besides edgekd's own and the teacher/student refs
    # above (edgekd.factories): e.g. the factory a given student checkpoint was built with.
    trust_factories: list[str] = Field(default_factory=list)
    # student: auto keeps this share of each SLO spare when it picks from measured latency (edgekd.profile)
    budget_margin: float = Field(default=0.10, ge=0, lt=1)
    # edgekd.distill.DistillConfig fields (epochs, lr, temperature, alpha, losses, mode, ...),
    # validated by the distillation stage itself so the recipe and the API never drift apart.
    distill: dict = Field(default_factory=lambda: {"epochs": 12, "patience": None})  # the demo: about a minute
    prune: PruneSection = PruneSection()
    quant: QuantSection = QuantSection()
    bench: BenchSection = BenchSection()

    def trusted_factories(self) -> frozenset[str]:
        """What this recipe's checkpoints (given ones, and the run's own stages on --resume) may name."""
        from edgekd.factories import user_trusted

        return user_trusted([self.teacher, self.student, *self.trust_factories])

    @field_validator("trust_factories")
    @classmethod
    def _factory_refs(cls, refs: list[str]) -> list[str]:
        from edgekd.factories import is_factory_ref

        for ref in refs:
            if not is_factory_ref(ref):
                raise ValueError(f"'{ref}' is not a factory reference (package.module:callable)")
        return refs

    @field_validator("formats")
    @classmethod
    def _onnx_first(cls, formats: list[str]) -> list[str]:
        """ONNX is the graph every other format is converted from and what the ablation is scored on."""
        if "onnx" not in formats:
            raise ValueError(f"{formats} lacks onnx: every run exports ONNX (OpenVINO IR is converted from it)")
        return formats

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
        elif kind not in ("prune", "layers", "auto") and Path(spec).suffix in (".pt", ".pth", ".ckpt") \
                and not Path(spec).is_file():
            raise ValueError(f"'{spec}': no such checkpoint file")
        return spec


def load_recipe(path: str | Path | None, *, distill_epochs: int | None = None, quant_epochs: int | None = None,
                **overrides) -> Recipe:
    """The recipe at `path` (or the embedded default) with non-None `overrides` applied
    (top-level keys, plus the two epoch counts users most often change from the command line).
    Everything checkable without loading a model or data is checked here, the data file included."""
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
    flag = " (epochs from --epochs)" if distill_epochs is not None else ""
    config_from_mapping(recipe.distill, source=f"{source}: distill{flag}")  # fail before any work starts
    check_data_ref(recipe.data)
    return recipe
