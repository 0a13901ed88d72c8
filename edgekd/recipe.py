"""The compress recipe: every setting of a run in one YAML file, validated strictly.

Command-line flags override the recipe; the resolved recipe is stored in the run's manifest
so the run can be reproduced exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekd.bench.core import MAX_RUNS, MAX_TIME_BUDGET_S
from edgekd.data import SEED_LIMIT, check_data_ref
from edgekd.distill.config import MAX_EPOCHS, MAX_LR, MAX_STEPS, config_from_mapping
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
    # bound QAT (a smoke run); None: epochs (causal LMs, which count steps: distill.max_steps)
    max_steps: Optional[int] = Field(default=None, ge=1, le=MAX_STEPS)
    # Causal LMs quantize weights only: 8 (per output channel) or 4 (groups of group_size along the input)
    weight_bits: Literal[4, 8] = 8
    group_size: Literal[32, 64, 128] = 128


class LMSection(_Section):
    """Causal-LM settings beyond `distill` (steps, lr, temperature, alpha): the token-level KD target (the
    teacher's top-k logits plus a tail bucket), the text windows, and sequence-level KD on cached teacher
    generations (`sequence_kd_prompts` > 0)."""

    top_k: int = Field(default=32, ge=1, le=1024)
    divergence: Literal["forward", "reverse", "jsd"] = "forward"
    seq_len: int = Field(default=128, ge=8, le=8192)
    train_tokens: int = Field(default=200_000, ge=1_000, le=100_000_000)
    eval_windows: int = Field(default=16, ge=1, le=4096)
    parity_prompts: int = Field(default=8, ge=1, le=256)
    sequence_kd_prompts: int = Field(default=0, ge=0, le=100_000)
    sequence_kd_new_tokens: int = Field(default=48, ge=1, le=4096)
    speculative_k: int = Field(default=4, ge=1, le=16)


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
    # This run's budget: SLO keys (as in a target profile's `slo`) replacing the profiles' own, per target
    # name or "*" for every target (a named target's entry wins over "*"); null lifts a limit.
    slo: dict[str, dict] = Field(default_factory=dict, max_length=64)
    # edgekd.distill.DistillConfig fields (epochs, lr, temperature, alpha, losses, mode, ...),
    # validated by the distillation stage itself so the recipe and the API never drift apart.
    distill: dict = Field(default_factory=lambda: {"epochs": 12, "patience": None})  # the demo: about a minute
    prune: PruneSection = PruneSection()
    quant: QuantSection = QuantSection()
    lm: LMSection = LMSection()
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

    @field_validator("slo")
    @classmethod
    def _slo_keys(cls, overrides: dict[str, dict]) -> dict[str, dict]:
        """Each entry's keys and values checked now (which target names exist is checked once they load)."""
        from edgekd.targets import Slo

        for name, limits in overrides.items():
            unknown = sorted(str(key) for key in set(limits) - set(Slo.model_fields))
            if unknown:
                raise ValueError(f"slo.{name}: unknown SLO key '{unknown[0]}' (known: {', '.join(Slo.model_fields)})")
            try:
                Slo.model_validate({k: v for k, v in limits.items() if v is not None})
            except ValidationError as err:
                first = err.errors()[0]
                raise ValueError(f"slo.{name}.{first['loc'][0]}: {first['msg']} (got {first.get('input')!r})") from None
        return overrides

    def budgeted(self, targets: list) -> list:
        """`targets` under this recipe's `slo` overrides (edgekd.targets.apply_slo_overrides)."""
        from edgekd.targets import apply_slo_overrides

        return apply_slo_overrides(targets, self.slo, source="recipe key 'slo'")

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
        from edgekd.student_spec import parse_student

        try:
            made = parse_student(spec)
        except BadInput as err:
            raise ValueError(str(err)) from None
        if made is None and Path(spec).suffix in (".pt", ".pth", ".ckpt") and not Path(spec).is_file():
            raise ValueError(f"'{spec}': no such checkpoint file")
        return spec


EXAMPLE = {
    "student": "auto",
    "labeled_fraction": 0.1,
    "slo": {"*": {"model_size_mb": 0.2, "min_speedup": 1.25}},
}
"""What makes the embedded default an example of edgekd's job, over the Recipe defaults: a budget that binds
(the deployed artifact at most 0.2 MB, which rules out the teacher and the larger students on every host, and
at least 1.25x faster than the FP32 teacher on each target, a floor with room for hosts slower at INT8 than
this project's VNNI one, where OpenVINO measured 1.72x; the x86 profiles' own 10 ms is a hundred times the
digits model's latency), a student chosen for it (`auto`), and
labels on 10% of the images with the rest unlabeled, where the teacher's knowledge is what the student
learns from. It applies when neither a recipe file, a teacher nor data is given: another model or
data set keeps the plain defaults (all labels, prune:0.5, the profiles' SLOs)."""


def example_recipe(**overrides) -> Recipe:
    """The embedded example (`edgekd compress` with no recipe, teacher or data)."""
    return Recipe.model_validate({**EXAMPLE, **overrides})


def _with_flags(recipe_slo, flags: dict[str, dict]):
    """The recipe's `slo` with `--slo` flags over it: a flag for every target ("*") also beats a recipe entry
    for one target, since flags override the recipe. A malformed recipe entry is left for validation to name."""
    if recipe_slo is None:
        recipe_slo = {}
    if not isinstance(recipe_slo, dict):
        return recipe_slo
    merged = dict(recipe_slo)
    for scope, limits in flags.items():
        for name in [scope] + ([n for n in merged if n != "*"] if scope == "*" else []):
            entry = merged.get(name)
            if entry is None or isinstance(entry, dict):
                merged[name] = {**(entry or {}), **limits}
    return merged


def load_recipe(path: str | Path | None, *, distill_epochs: int | None = None, quant_epochs: int | None = None,
                slo_flags: dict[str, dict] | None = None, **overrides) -> Recipe:
    """The recipe at `path` (or the embedded default) with non-None `overrides` applied
    (top-level keys, plus the two epoch counts users most often change from the command line, and
    `--slo` flags merged over the recipe's `slo` per target).
    Everything checkable without loading a model or data is checked here, the data file included."""
    is_example = path is None and overrides.get("teacher") is None and overrides.get("data") is None
    data: dict = dict(EXAMPLE) if is_example else {}
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
    if slo_flags:
        data["slo"] = _with_flags(data.get("slo"), slo_flags)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise BadInput(validation_message(source, err)) from None
    flag = " (epochs from --epochs)" if distill_epochs is not None else ""
    config_from_mapping(recipe.distill, source=f"{source}: distill{flag}")  # fail before any work starts
    check_data_ref(recipe.data)
    return recipe
