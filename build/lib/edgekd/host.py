"""What this host can run: CPU architecture and ISA, ONNX Runtime providers, OpenVINO devices.

Target availability is decided from these facts alone, so `edgekd targets` explains in words
why a profile cannot be measured here instead of silently benchmarking the wrong device.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

# cpuinfo flag -> the name edgekd reports. x86 flags come from the "flags" line, ARM ones
# from "Features" (asimd is NEON, asimddp the int8 dot-product extension).
_ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
}


@dataclass(frozen=True)
class HostInfo:
    arch: str  # "x86_64" | "aarch64" | ...
    cpu: str
    isa: tuple[str, ...]
    ort_providers: tuple[str, ...]
    openvino_devices: tuple[str, ...]
    cores: int
    extra: dict = field(default_factory=dict)

    def has_isa(self, name: str) -> bool:
        return name in self.isa

    def as_dict(self) -> dict:
        return {
            "arch": self.arch,
            "cpu": self.cpu,
            "isa": list(self.isa),
            "ort_providers": list(self.ort_providers),
            "openvino_devices": list(self.openvino_devices),
            "cores": self.cores,
        }


def _read_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", set()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    return tuple(ort.get_available_providers())


def _openvino_devices() -> tuple[str, ...]:
    try:
        import openvino as ov
    except ImportError:
        return ()
    try:
        return tuple(ov.Core().available_devices)
    except RuntimeError:
        return ()


@functools.lru_cache(maxsize=1)
def detect_host() -> HostInfo:
    """Probe the host once per process."""
    import os

    cpu, flags = _read_cpuinfo()
    isa = tuple(name for flag, name in _ISA_FLAGS.items() if flag in flags)
    arch = platform.machine().lower()
    if arch == "arm64":
        arch = "aarch64"
    if arch == "aarch64" and "neon" not in isa:
        isa = isa + ("neon",)  # NEON is mandatory on AArch64 even where cpuinfo omits it
    return HostInfo(
        arch=arch,
        cpu=cpu,
        isa=isa,
        ort_providers=_ort_providers(),
        openvino_devices=_openvino_devices(),
        cores=os.cpu_count() or 1,
    )


def isa_summary(host: HostInfo | None = None) -> str:
    """One line for benchmark tables: 'x86_64 Intel(R) Xeon(R) ... [avx2 fma]'."""
    host = host or detect_host()
    return f"{host.arch} {host.cpu} [{' '.join(host.isa) or 'no SIMD flags read'}]"
