"""Distillation-aware quantization: fake-quant by module swap, PTQ, QAT+KD, per-target layer choices.

The scheme (dtype, symmetry, per-channel) comes from a target profile's `quantization` block
(edgekd.targets.QuantScheme), so each runtime gets the integer layout its kernels want.
Its checkpoint transform ("fake-quant", `replay_transform`) is registered by edgekd.registry.
"""

from edgekd.quant.choice import LayerChoice
from edgekd.quant.modules import FakeQuantizer, MatMul, QuantConv1d, QuantConv2d, QuantLinear, QuantMatMul
from edgekd.quant.ops import onnx_translation_table
from edgekd.quant.pipeline import QuantConfig, QuantizeResult, quantize
from edgekd.quant.prepare import (
    TRANSFORMER_SMOOTH_ALPHA,
    calibrate,
    checkpoint_transform,
    freeze,
    prepare,
    quantize_ptq,
    smooth,
)
from edgekd.quant.qat import QATSchedule, qat, qat_distill_config
from edgekd.quant.qparams import weight_bits_for_host, weight_bits_for_target
from edgekd.quant.report import QuantReport

__all__ = [
    "prepare", "smooth", "calibrate", "quantize_ptq", "TRANSFORMER_SMOOTH_ALPHA", "qat", "quantize", "QuantConfig",
    "QuantizeResult", "QuantReport",
    "LayerChoice", "freeze", "checkpoint_transform", "qat_distill_config", "QATSchedule",
    "FakeQuantizer", "MatMul", "QuantMatMul", "QuantConv1d", "QuantConv2d", "QuantLinear",
    "onnx_translation_table", "weight_bits_for_host", "weight_bits_for_target",
]
