"""The two fake-quant operators and how they become ONNX QuantizeLinear / DequantizeLinear.

Why custom operators (measured with torch 2.13, onnxscript 0.7.2): `torch.fake_quantize_per_*`
cannot go through the dynamo exporter at all (torch.export decomposes them into a `cachemask`
op without a fake-tensor kernel), and `torch.ops.quantized_decomposed` only exists after
importing the deprecated torch.ao. A `torch.library` custom op is a first-class node in
torch.export, carries its own autograd formula (straight-through + LSQ), and maps through
`custom_translation_table` to exactly one QuantizeLinear -> DequantizeLinear pair, with the
zero point's dtype (uint8 / int8) choosing the ONNX integer type. Weight Q nodes are constant
folded to int8 initializers after export (edgekd.export), so the file stores integers.
"""

from __future__ import annotations

import torch
from onnxscript import ir
from onnxscript import opset18 as op

_DTYPE_RANGE = {ir.DataType.UINT8: (0, 255), ir.DataType.INT8: (-128, 127)}


def _broadcast(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-tensor (0-d) or per-channel (1-d along `axis`) parameter shaped to broadcast over x."""
    if param.dim() == 0:
        return param
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


@torch.library.custom_op("edgekd::fake_quantize", mutates_args=())
def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int,
                  axis: int) -> torch.Tensor:
    """Quantize to the integer grid and back: (clamp(round(x/s) + z, qmin, qmax) - z) * s."""
    s = _broadcast(scale, x, axis)
    z = _broadcast(zero_point, x, axis).float()
    return (torch.clamp(torch.round(x / s) + z, quant_min, quant_max) - z) * s


@fake_quantize.register_fake
def _fake_quantize_meta(x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x)


def _fake_quantize_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis = inputs
    # Copies of the (small) grid parameters: a shared quantizer may move its range in place when
    # it runs again later in the same forward (QAT warm-up), which must not corrupt this backward.
    ctx.save_for_backward(x, scale.detach().clone(), zero_point.clone())
    ctx.quant_min, ctx.quant_max, ctx.axis = quant_min, quant_max, axis


def _fake_quantize_backward(ctx, grad):
    """Straight-through estimator clipped to the grid; LSQ gradient for a learnable scale.

    d out / d x = 1 where the value lands inside [qmin, qmax], else 0. For the scale (Esser et al.,
    LSQ): round(x/s) - x/s inside, (qmin - z) or (qmax - z) where clamped, times the LSQ gradient
    scale 1/sqrt(elements per scale * qmax) so large tensors do not swamp the step size.
    """
    x, scale, zero_point = ctx.saved_tensors
    s = _broadcast(scale, x, ctx.axis)
    z = _broadcast(zero_point, x, ctx.axis).float()
    v = x / s
    q = torch.round(v) + z
    below, above = q < ctx.quant_min, q > ctx.quant_max
    inside = ~(below | above)
    grad_x = grad * inside if ctx.needs_input_grad[0] else None
    grad_scale = None
    if ctx.needs_input_grad[1]:
        local = torch.where(inside, torch.round(v) - v,
                            torch.where(below, ctx.quant_min - z, ctx.quant_max - z).expand_as(v))
        per_element = grad * local
        if scale.dim() == 0:
            grad_scale = per_element.sum()
        else:
            dims = [d for d in range(x.dim()) if d != ctx.axis % x.dim()]
            grad_scale = per_element.sum(dim=dims)
        elements = x.numel() // max(scale.numel(), 1)
        grad_scale = grad_scale / (elements * max(abs(ctx.quant_max), abs(ctx.quant_min))) ** 0.5
    return grad_x, grad_scale, None, None, None, None


fake_quantize.register_autograd(_fake_quantize_backward, setup_context=_fake_quantize_setup)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@torch.library.custom_op("edgekd::quantize_bias", mutates_args=())
def quantize_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round a bias to the int32 grid of scale = input scale * weight scale, as integer kernels add it."""
    return torch.clamp(torch.round(bias / scale), INT32_MIN, INT32_MAX) * scale


@quantize_bias.register_fake
def _quantize_bias_meta(bias, scale):
    return torch.empty_like(bias)


def _quantize_bias_setup(ctx, inputs, output):
    pass


def _quantize_bias_backward(ctx, grad):
    return grad, None


quantize_bias.register_autograd(_quantize_bias_backward, setup_context=_quantize_bias_setup)


def _fake_quantize_onnx(x, scale, zero_point, quant_min: int, quant_max: int, axis: int):
    quantized = op.QuantizeLinear(x, scale, zero_point, axis=axis)
    full_range = _DTYPE_RANGE[zero_point.type.dtype]
    if (quant_min, quant_max) != full_range:
        # A narrower grid than the storage type (7-bit or narrow-symmetric weights): clamp the
        # integers. Applied to weights only, where the clamp is constant folded away.
        low = op.Constant(value=ir.tensor([quant_min], dtype=zero_point.type.dtype))
        high = op.Constant(value=ir.tensor([quant_max], dtype=zero_point.type.dtype))
        quantized = op.Clip(quantized, op.Squeeze(low), op.Squeeze(high))
    return op.DequantizeLinear(quantized, scale, zero_point, axis=axis)


def _quantize_bias_onnx(bias, scale):
    # ONNX has no int32 QuantizeLinear; this arithmetic on constants is folded after export,
    # leaving DequantizeLinear(int32 initializer), which ONNX Runtime fuses into QLinearConv/QGemm.
    rounded = op.Clip(op.Round(op.Div(bias, scale)), op.Constant(value_float=float(INT32_MIN)),
                      op.Constant(value_float=float(INT32_MAX)))
    return op.DequantizeLinear(op.Cast(rounded, to=ir.DataType.INT32), scale, axis=0)


def onnx_translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: the fake-quant ops as ONNX QDQ."""
    return {
        torch.ops.edgekd.fake_quantize.default: _fake_quantize_onnx,
        torch.ops.edgekd.quantize_bias.default: _quantize_bias_onnx,
    }
