"""Integer grids and the scale / zero-point arithmetic shared by observers, modules and export.

A quantized tensor is `q = clamp(round(x / scale) + zero_point, qmin, qmax)`, read back as
`(q - zero_point) * scale`, exactly what ONNX QuantizeLinear / DequantizeLinear compute (both
round half to even, like `torch.round`), so the PyTorch fake-quant model and the exported QDQ
model agree bit for bit wherever the runtime's integer kernels do not saturate.

Weight bits: x86 CPUs without VNNI multiply uint8 activations by int8 weights with VPMADDUBSW,
which adds two u8*s8 products into a saturating int16 (255*127*2 > 32767). Both ONNX Runtime
(MLAS) and OpenVINO (oneDNN) were measured to clip there (max error 0.15 on a two-conv model, 0.0
with 7-bit weights), so on such hosts the default for u8 x s8 schemes is 7-bit weights, which
ONNX Runtime's own quantizer calls `reduce_range`. Other schemes and hosts get 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgekd.errors import BadInput
from edgekd.host import HostInfo, detect_host
from edgekd.targets import QuantScheme, Target

MIN_BITS, MAX_BITS = 2, 8
# Scales below this are treated as "all values equal" (a dead channel): avoids division by zero.
MIN_SCALE = 1e-8
_FAST_INT8_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Grid:
    """An integer grid: storage dtype, the clamp range actually used, and whether zero point is fixed at 0."""

    dtype: str  # "int8" | "uint8" | "int32"
    qmin: int
    qmax: int
    symmetric: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32}[self.dtype]

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin


def grid(*, dtype: str, symmetric: bool, bits: int = 8) -> Grid:
    """The grid for `bits` stored in an 8-bit `dtype`.

    Symmetric signed grids are narrow ([-127, 127] at 8 bits) so +x and -x quantize alike;
    a symmetric unsigned grid keeps zero point 128 (the middle), which is what uint8-only
    kernels expect from symmetric data.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise BadInput(f"quantization bits must be an integer in [{MIN_BITS}, {MAX_BITS}] "
                       f"(8-bit storage types only), got {bits!r}")
    if dtype not in ("int8", "uint8"):
        raise BadInput(f"quantization dtype must be 'int8' or 'uint8', got {dtype!r}")
    if dtype == "int8":
        half = 2 ** (bits - 1) - 1
        return Grid("int8", -half if symmetric else -half - 1, half, symmetric)
    return Grid("uint8", 0, 2**bits - 1, symmetric)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, g: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover [lo, hi] (elementwise, so per-channel works too).

    The range always includes 0 so that zero (padding, ReLU output) is exact.
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if g.symmetric:
        amax = torch.maximum(-lo, hi)
        if g.dtype == "int8":
            scale = amax / g.qmax
            zero = torch.zeros_like(scale)
        else:
            mid = (g.qmin + g.qmax + 1) // 2
            scale = amax / max(mid - g.qmin, g.qmax - mid)
            zero = torch.full_like(scale, mid)
    else:
        scale = (hi - lo) / g.levels
        zero = torch.round(g.qmin - lo / scale.clamp_min(MIN_SCALE))
    scale = scale.clamp_min(MIN_SCALE)
    zero = zero.clamp(g.qmin, g.qmax)
    return scale, zero.to(g.torch_dtype)


def weight_bits_for_host(scheme: QuantScheme, host: HostInfo | None = None) -> tuple[int, str]:
    """(bits, why) for weights validated on this host; see the module docstring."""
    host = host or detect_host()
    if _saturates(scheme) and host.arch == "x86_64" and not any(host.has_isa(i) for i in _FAST_INT8_ISA):
        return 7, ("7-bit weights: this x86 host has no VNNI/AMX, so u8 x s8 kernels add products in "
                   "saturating int16 (ONNX Runtime's reduce_range)")
    return 8, "8-bit weights"


def weight_bits_for_target(target: Target) -> tuple[int, str]:
    """(bits, why) for a deployment target: an x86 CPU profile that does not require VNNI may run on
    a CPU that saturates u8 x s8 products, so it gets 7-bit weights; NPUs, GPUs and ARM get 8."""
    scheme = target.quantization
    requires_vnni = any(isa in _FAST_INT8_ISA for isa in target.host.isa)
    if _saturates(scheme) and target.device == "cpu" and target.host.arch == "x86_64" and not requires_vnni:
        return 7, (f"7-bit weights: {target.name} may run on x86 CPUs without VNNI, whose u8 x s8 kernels "
                   "add products in saturating int16 (ONNX Runtime's reduce_range)")
    return 8, "8-bit weights"


def _saturates(scheme: QuantScheme) -> bool:
    return scheme.activations.dtype == "uint8" and scheme.weights.dtype == "int8"
