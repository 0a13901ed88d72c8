"""SLO verdicts: compare measured figures with a target profile's limits.

A verdict is only `pass` when every device figure the profile limits was actually measured on
the device: an absent device or a missing figure is `not-measured`, never a silent pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from edgekd.targets import Slo

Verdict = Literal["pass", "fail", "not-measured"]

# Figures that `edgekd bench` measures itself; each must be present for a `pass`.
DEVICE_KEYS = ("latency_p95_ms", "latency_p50_ms", "peak_memory_mb", "model_size_mb", "ttft_ms_p95")
# Device figures that are floors, not ceilings (a causal LM's decode rate).
FLOOR_KEYS = ("decode_tokens_per_s_min",)
# The model's metric retention comes from evaluation, and its speed-up from timing it against the
# FP32 teacher, not from the benchmark: each is checked only when the caller passes it in.
RETENTION_KEY = "min_metric_retention"
SPEEDUP_KEY = "min_speedup"
CALLER_KEYS = (RETENTION_KEY, SPEEDUP_KEY)


@dataclass(frozen=True)
class SloCheck:
    key: str
    limit: float
    value: Optional[float]
    ok: Optional[bool]  # None: not measured

    def to_dict(self) -> dict:
        return {"key": self.key, "limit": self.limit, "value": self.value, "ok": self.ok}


@dataclass(frozen=True)
class SloVerdict:
    verdict: Verdict
    checks: list[SloCheck] = field(default_factory=list)
    reason: Optional[str] = None  # why not measured, which checks failed, or what was skipped

    @property
    def failed(self) -> list[SloCheck]:
        return [c for c in self.checks if c.ok is False]

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks], "reason": self.reason}


def check_slo(*, slo: Slo, figures: dict, metric_retention: float | None = None, speedup: float | None = None,
              unavailable_reason: str | None = None) -> SloVerdict:
    """Check each limit `slo` sets against `figures` (keys as in DEVICE_KEYS; None = not measured).

    Latency, memory and size are upper bounds; `min_metric_retention` and `min_speedup` are lower
    bounds checked against `metric_retention` and `speedup` (p50 of the FP32 teacher over the
    model's, timed together). With `unavailable_reason` the verdict is `not-measured` whatever
    the figures say, because nothing ran on the intended device.
    """
    checks: list[SloCheck] = []
    for key in DEVICE_KEYS + FLOOR_KEYS:
        limit = getattr(slo, key)
        if limit is None:
            continue
        value = figures.get(key)
        ok = None if value is None else (value >= limit if key in FLOOR_KEYS else value <= limit)
        checks.append(SloCheck(key, limit, value, ok))
    for key, value in ((RETENTION_KEY, metric_retention), (SPEEDUP_KEY, speedup)):
        limit = getattr(slo, key)
        if limit is not None:
            checks.append(SloCheck(key, limit, value, None if value is None else value >= limit))

    if unavailable_reason:
        return SloVerdict("not-measured", checks, f"device not available: {unavailable_reason}")
    floors = CALLER_KEYS + FLOOR_KEYS
    over = [c.key for c in checks if c.ok is False and c.key not in floors]
    under = [c.key for c in checks if c.ok is False and c.key in floors]
    if over or under:
        return SloVerdict("fail", checks, "; ".join(
            [f"over the limit: {', '.join(over)}"] * bool(over) + [f"under the floor: {', '.join(under)}"] * bool(under)))
    missing = [c.key for c in checks if c.ok is None and c.key not in CALLER_KEYS]
    if missing:
        return SloVerdict("not-measured", checks, f"not measured: {', '.join(missing)}")
    notes = []
    if not checks:
        notes.append("the profile sets no SLO")
    notes += [f"{c.key} not checked: no {'metric retention' if c.key == RETENTION_KEY else 'teacher to time against'} "
              "was given" for c in checks if c.key in CALLER_KEYS and c.ok is None]
    return SloVerdict("pass", checks, "; ".join(notes) or None)
