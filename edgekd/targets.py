"""Target device profiles (`targets/*.yaml`): schema, loading and availability on this host.

A profile says which runtime and device measure the model, which INT8 scheme the vendor's
kernels want, how channels should be rounded, and the SLOs the deployed model must meet.
Validation is strict: an unknown key, a wrong type or an impossible value names the file
and the key, because a silently ignored typo in a budget is a budget nobody checks.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.errors import BadInput
from edgekd.host import HostInfo, detect_host



def bundled_dir(name: str) -> Path:
    """The built-in `targets/` or `calibration/` specs: the copy a wheel carries in edgekd/_builtin/,
    else the repository's top-level folder (a checkout or an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "_builtin" / name
    return installed if installed.is_dir() else package.parent / name


TARGETS_DIR = bundled_dir("targets")


class _Strict(BaseModel):
    """Every number must be finite: an `.inf` budget is a budget nobody checks."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class WeightScheme(_Strict):
    dtype: Literal["int8", "uint8"] = "int8"
    symmetric: bool = True
    per_channel: bool = True


class ActivationScheme(_Strict):
    dtype: Literal["uint8", "int8"] = "uint8"
    symmetric: bool = False


class QuantScheme(_Strict):
    """What the target's INT8 kernels want; the quantizer follows it exactly."""

    weights: WeightScheme = WeightScheme()
    activations: ActivationScheme = ActivationScheme()


class Slo(_Strict):
    latency_p95_ms: Optional[float] = Field(default=None, gt=0)
    latency_p50_ms: Optional[float] = Field(default=None, gt=0)
    peak_memory_mb: Optional[float] = Field(default=None, gt=0)
    model_size_mb: Optional[float] = Field(default=None, gt=0)
    min_metric_retention: Optional[float] = Field(default=None, gt=0, le=1.5)
    # The deployable's p50 at least this many times below the FP32 teacher's on the same target, both
    # timed in the same interleaved rounds: a budget that means the same on every host ("3x faster"),
    # where an absolute one binds on one CPU and is trivial or impossible on the next.
    min_speedup: Optional[float] = Field(default=None, gt=0, le=1000)
    # Causal LMs: time to first token (prefill of `generation.prompt_tokens`) at p95, and the decode rate.
    ttft_ms_p95: Optional[float] = Field(default=None, gt=0)
    decode_tokens_per_s_min: Optional[float] = Field(default=None, gt=0)


class Generation(_Strict):
    """The generation a causal LM is timed at on this target: a prompt of `prompt_tokens`, then
    `new_tokens` greedy tokens (defaults: a short chat turn)."""

    prompt_tokens: int = Field(default=64, ge=1, le=32768)
    new_tokens: int = Field(default=32, ge=2, le=4096)


class HostRequirements(_Strict):
    """The CPU the profile describes; a host of another architecture cannot stand in for it."""

    arch: Optional[Literal["x86_64", "aarch64"]] = None
    isa: list[str] = Field(default_factory=list)  # needed to run at all
    int8_isa: list[str] = Field(default_factory=list)  # any of these makes INT8 fast; absent -> a warning


class PeakCompute(_Strict):
    """Vendor peak figures, used only for a labelled roofline estimate on absent devices."""

    int8_tops: Optional[float] = Field(default=None, gt=0)
    fp16_tflops: Optional[float] = Field(default=None, gt=0)
    fp32_tflops: Optional[float] = Field(default=None, gt=0)
    memory_bandwidth_gbs: Optional[float] = Field(default=None, gt=0)


class Target(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    device: Literal["cpu", "gpu", "npu"]
    runtime: Literal["openvino", "onnxruntime"]
    runtime_device: str = Field(min_length=1)
    precision: Literal["fp32", "fp16", "int8"]
    quantization: QuantScheme = QuantScheme()
    channel_multiple: int = Field(default=1, ge=1, le=1024)
    static_shapes: bool = False
    batch_size: int = Field(default=1, ge=1, le=4096)
    threads: Optional[int] = Field(default=None, ge=1, le=1024)
    slo: Slo = Slo()
    generation: Generation = Generation()
    host: HostRequirements = HostRequirements()
    peak: PeakCompute = PeakCompute()

    def with_slo(self, overrides: dict, *, source: str) -> "Target":
        """This profile with `overrides` (SLO keys -> limits; None lifts a limit) replacing its own: a run's
        budget set in its recipe without copying the profile. `source` names the overrides in errors."""
        merged = {**self.slo.model_dump(), **overrides}
        try:
            slo = Slo.model_validate(merged)
        except ValidationError as err:
            raise BadInput(validation_message(source, err)) from None
        return self.model_copy(update={"slo": slo})


def apply_slo_overrides(targets: list[Target], overrides: dict[str, dict], *, source: str) -> list[Target]:
    """`targets` with `overrides` ({target name or "*": {SLO key: limit or None}}) replacing their SLOs, a
    named target's entry over "*". An entry naming no target of the run is an error: a budget for a target
    nobody measures is a typo nobody would notice."""
    names = {t.name for t in targets}
    stray = sorted(set(overrides) - names - {"*"})
    if stray:
        raise BadInput(f"{source}: '{stray[0]}' is not a target of this run ({', '.join(sorted(names))})")
    return [t.with_slo({**overrides.get("*", {}), **overrides.get(t.name, {})}, source=f"{source} for {t.name}")
            if ("*" in overrides or t.name in overrides) else t for t in targets]


def parse_slo_flags(flags: list[str]) -> dict[str, dict]:
    """`--slo [TARGET:]KEY=VALUE` flags as `apply_slo_overrides` takes them (no TARGET: every target;
    VALUE `none` lifts the limit). Keys and values are checked when the overrides are applied."""
    overrides: dict[str, dict] = {}
    for flag in flags:
        assignment, eq, value = flag.partition("=")
        scope, colon, key = assignment.rpartition(":")  # a target's name may hold colons; a key never does
        shown = flag if len(flag) <= 120 else flag[:120] + "..."
        if not eq or not key or (colon and not scope):
            raise BadInput(f"--slo '{shown}': expected [TARGET:]KEY=VALUE, e.g. latency_p95_ms=4 or "
                           "x86-cpu-openvino:min_speedup=2")
        if key not in Slo.model_fields:
            raise BadInput(f"--slo '{shown}': unknown SLO key (known: {', '.join(Slo.model_fields)})")
        try:
            limit = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise BadInput(f"--slo '{shown}': the value is not a number (or none)") from None
        overrides.setdefault(scope or "*", {})[key] = limit
    return overrides


def validation_message(source: str, err: ValidationError) -> str:
    """A pydantic error as one line naming the file and the key at fault."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    value = first.get("input")
    shown = f" (got {value!r})" if first["type"] != "missing" and not isinstance(value, dict) else ""
    return f"{source}: key '{key}': {first['msg']}{shown}"


def parse_target(data: object, *, source: str) -> Target:
    """Validate a mapping as a target profile; `source` names it in errors."""
    if not isinstance(data, dict):
        raise BadInput(f"{source}: a target profile must be a YAML mapping, got {type(data).__name__}")
    try:
        return Target.model_validate(data)
    except ValidationError as err:
        raise BadInput(validation_message(source, err)) from None


MAX_YAML_BYTES = 1 << 20
"""Largest profile, recipe or dataset spec read (1 MiB): they are written by hand, a few KB long."""

MAX_YAML_VALUES = 1_000_000
"""Most values a YAML file may stand for once its aliases (`*name`) are expanded: a few lines of
nested aliases can stand for billions, which the first JSON dump of the recipe would write out."""


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def check_regular_file(path: Path, *, max_bytes: int, kind: str) -> int:
    """The size of `path`, which must be a regular file of at most `max_bytes`: a device
    (/dev/zero), a pipe or a directory could stream without end. `kind` names it in errors."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise BadInput(f"{path}: cannot read: {err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{path}: not a regular file (a directory, device or pipe); {kind} must be a file")
    if info.st_size > max_bytes:
        raise BadInput(f"{path}: {_mib(info.st_size)}; {kind} may be at most {_mib(max_bytes)}")
    return info.st_size


def read_bounded(path: Path, *, max_bytes: int, kind: str) -> bytes:
    """A regular file's bytes, never more than `max_bytes` even when its size lies (files in /proc say 0)."""
    check_regular_file(path, max_bytes=max_bytes, kind=kind)
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as err:
        raise BadInput(f"{path}: cannot read: {err}") from None
    if len(data) > max_bytes:
        raise BadInput(f"{path}: holds more than {_mib(max_bytes)}; {kind} may be at most {_mib(max_bytes)}")
    return data


def _check_expanded_size(value: object, path: Path) -> None:
    """Refuse YAML whose aliases expand past MAX_YAML_VALUES values (a "billion laughs" file)."""
    pending, count = [value], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise BadInput(f"{path}: its aliases (*name) expand to more than {MAX_YAML_VALUES:,} values")
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def read_yaml(path: Path) -> object:
    """`yaml.safe_load` a file, turning a missing, oversized or broken file into a BadInput naming it."""
    try:
        text = read_bounded(path, max_bytes=MAX_YAML_BYTES, kind="a YAML file").decode()
    except UnicodeDecodeError as err:
        raise BadInput(f"{path}: cannot read: {err}") from None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BadInput(f"{path}: broken YAML{where}: {problem}") from None
    except RecursionError:
        raise BadInput(f"{path}: broken YAML: nested too deeply") from None
    _check_expanded_size(value, path)
    return value


def load_target_file(path: str | Path) -> Target:
    path = Path(path)
    target = parse_target(read_yaml(path), source=str(path))
    if path.suffix in (".yaml", ".yml") and target.name != path.stem:
        raise BadInput(f"{path}: key 'name': '{target.name}' must match the file name '{path.stem}'")
    return target


def list_targets() -> list[Target]:
    """Every bundled profile, sorted by name."""
    return [load_target_file(path) for path in sorted(TARGETS_DIR.glob("*.yaml"))]


def load_target(name_or_path: str | Path) -> Target:
    """A bundled profile by name, or any profile YAML by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return load_target_file(candidate)
    path = TARGETS_DIR / f"{name_or_path}.yaml"
    if path.is_file():
        return load_target_file(path)
    known = ", ".join(t.name for t in list_targets())
    raise BadInput(f"unknown target '{name_or_path}' (known: {known}; or give a path to a profile YAML)")


_OV_DEVICE_PREFIX = {"CPU": "CPU", "GPU": "GPU", "NPU": "NPU"}


def availability(target: Target, host: HostInfo | None = None) -> tuple[bool, str | None, list[str]]:
    """(available, reason if not, warnings) for measuring `target` on this host.

    Warnings say where the host lacks what the profile assumes (e.g. VNNI for fast INT8):
    the numbers are real but not representative of the intended device.
    """
    host = host or detect_host()
    warnings: list[str] = []
    need = target.host
    if need.arch and need.arch != host.arch:
        return False, f"profile describes an {need.arch} CPU; this host is {host.arch}", warnings
    missing = [isa for isa in need.isa if not host.has_isa(isa)]
    if missing:
        return False, f"host CPU lacks {', '.join(missing)} required by the profile", warnings
    if target.runtime == "onnxruntime":
        if target.runtime_device not in host.ort_providers:
            have = ", ".join(host.ort_providers) or "none"
            return False, (
                f"ONNX Runtime execution provider {target.runtime_device} is not available "
                f"(this onnxruntime build has: {have})"
            ), warnings
    else:
        wanted = target.runtime_device.split(".")[0]
        if not any(dev.split(".")[0] == wanted for dev in host.openvino_devices):
            have = ", ".join(host.openvino_devices) or "none"
            return False, f"OpenVINO device {target.runtime_device} is not present (OpenVINO sees: {have})", warnings
    if target.precision == "int8" and need.int8_isa and not any(host.has_isa(i) for i in need.int8_isa):
        warnings.append(
            f"host lacks {' / '.join(need.int8_isa)}: INT8 runs on slower {'/'.join(host.isa[:2]) or 'generic'} "
            "kernels here, so INT8 speedups understate the intended device"
        )
    return True, None, warnings
