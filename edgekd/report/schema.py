"""report.json as one typed model, and the variant names its rows use: `edgekd compress` writes it through `Report`, `edgekd report`
reads it back through the same model, so the writer and the renderer cannot drift apart.

The contract (shared/docs/interface.md) promises `ablation`, `targets` and `parity`; the rest is
edgekd's own and optional on read, so a report from an older edgekd still renders. Unknown keys
are kept (a newer report renders on an older edgekd).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import BadInput

# The variant names of a run, defined once (steps, report rendering and plots read them here).
TEACHER_FP32 = "teacher-fp32"
TEACHER_INT8 = "teacher-int8-ptq"
NO_KD = "student-no-kd"
KD_FP32 = "student-kd-fp32"
DEPLOYABLE = "student-kd-qat-int8"  # the QAT+KD student in the first INT8 target's scheme
VARIANTS = (TEACHER_FP32, TEACHER_INT8, NO_KD, KD_FP32, DEPLOYABLE)  # report.json's ablation, in order
FP16_VARIANT = "student-kd-fp16"  # the KD student stored in FP16, for targets whose precision is fp16


def own_variant(base: str, spec: str) -> str:
    """`base` made of the larger student `spec` that `student: auto` picked for some targets
    ("student-kd-qat-int8@prune:0.375"); the run's own student keeps the bare names."""
    return f"{base}@{spec}"


def base_variant(name: str) -> str:
    """What kind of variant `name` is, whichever student it is made of."""
    return name.partition("@")[0]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Metric(_Open):
    name: str
    value: Optional[float]


class VariantRow(_Open):
    """One exported variant, scored and timed on the same held-out data as every other row."""

    variant: str
    metric: Metric
    params: Optional[int] = None
    size_mb: Optional[float] = None
    precision: Optional[str] = None
    artifact: Optional[str] = None
    latency_p50_ms: dict[str, Optional[float]] = {}
    latency_p95_ms: dict[str, Optional[float]] = {}


class SloCheck(_Open):
    key: str


class Slo(_Open):
    verdict: str
    checks: list[SloCheck]


class TargetEntry(_Open):
    """A target's full benchmark of what it deploys (the shape `edgekd bench --json` writes)."""

    name: str
    available: bool
    slo: Slo


class Report(_Open):
    ablation: list[VariantRow]
    targets: list[TargetEntry]
    parity: dict
    edgekd_version: Optional[str] = None
    created: Optional[str] = None
    task: Optional[str] = None
    run: Optional[dict] = None
    deployables: list[VariantRow] = []  # students made for particular targets (FP16, another INT8 scheme)
    deployed: Optional[str] = None  # the run root's model: what the first target deploys
    int8_executed: Optional[dict] = None
    retention: Optional[float] = None
    speedup_vs_teacher: Optional[dict] = None
    training: Optional[dict] = None
    audit: Optional[dict] = None
    quantization: Optional[dict] = None
    prune: Optional[dict] = None
    budget: Optional[dict] = None  # student: auto: the choice and, per target, the measured candidates
    notes: list[str] = []
    host: Optional[dict] = None


def _where(location: tuple) -> str:
    """pydantic's error location as the report's key path: ablation[0].metric.value."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_report(data: object, *, source: str) -> Report:
    """`data` (parsed JSON) as a Report; BadInput names the key at fault."""
    if not isinstance(data, dict):
        raise BadInput(f"{source}: top level must be an object, got {type(data).__name__}")
    try:
        return Report.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = _where(first["loc"])
        if first["type"] == "missing":
            raise BadInput(f"{source}: key '{key}' is missing") from None
        kind = _KINDS.get(first["type"].removesuffix("_type"), first["msg"])
        raise BadInput(f"{source}: key '{key}' must be {kind}, got {type(first['input']).__name__}") from None


_KINDS = {"bool": "bool", "float": "a number", "int": "an integer", "string": "str", "dict": "an object",
          "list": "a list"}
