"""Roofline latency estimate for a target whose device is absent.

latency >= max(2 * MACs / peak ops per second, bytes moved / memory bandwidth): a lower bound
from the profile's vendor peak figures. It is labelled `estimated` and never feeds an SLO
verdict, because real latency depends on utilisation, launch overhead and kernel coverage.
"""

from __future__ import annotations

import math
from typing import Optional

from edgekd.bench.artifact import Artifact, read_openvino_model
from edgekd.targets import Target

_BYTES_PER_WEIGHT = {"int8": 1, "fp16": 2, "fp32": 4}
_CONV_LIKE = {"Convolution": 1, "GroupConvolution": 2}  # output elements x prod(weight dims from here)
_DECONV_LIKE = {"ConvolutionBackpropData": 1, "GroupConvolutionBackpropData": 2}  # input elements x ...


def count_macs(model) -> tuple[int, int]:
    """(multiply-accumulates, compute ops whose shapes were unknown) of an OpenVINO model with static shapes."""
    macs, unknown = 0, 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _CONV_LIKE and kind not in _DECONV_LIKE and kind != "MatMul":
            continue
        shapes = [op.get_input_partial_shape(i) for i in range(2)] + [op.get_output_partial_shape(0)]
        if any(s.is_dynamic for s in shapes):
            unknown += 1
            continue
        data, weight, out = ([d.get_length() for d in s] for s in shapes)
        if kind in _CONV_LIKE:
            macs += math.prod(out) * math.prod(weight[_CONV_LIKE[kind]:])
        elif kind in _DECONV_LIKE:
            macs += math.prod(data) * math.prod(weight[_DECONV_LIKE[kind]:])
        else:
            transpose_a = op.get_attributes().get("transpose_a", False)
            inner = data[-1] if len(data) == 1 or not transpose_a else data[-2]
            macs += math.prod(out) * inner
    return macs, unknown


def weight_elements(model) -> int:
    """Elements of the model's numeric constants (weights, biases, scales; not shape/index constants)."""
    total = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_output_element_type(0)
        shape = op.get_output_partial_shape(0)
        if (kind.is_real() or kind.bitwidth <= 8) and shape.is_static:
            total += math.prod(d.get_length() for d in shape)
    return total


def roofline_estimate(*, artifact: Artifact, target: Target, shapes: dict[str, list[int]],
                      input_bytes: int, batch_size: int) -> Optional[dict]:
    """The estimate as a labelled dict, or None when the profile gives no usable peak figure."""
    peak = target.peak
    # The peak for the target's precision; a slower precision's peak stands in when it is missing.
    candidates = {"int8": ("int8_tops", "fp16_tflops", "fp32_tflops"), "fp16": ("fp16_tflops", "fp32_tflops"),
                  "fp32": ("fp32_tflops",)}[target.precision]
    peak_key = next((key for key in candidates if getattr(peak, key) is not None), None)
    ops_per_s = getattr(peak, peak_key) if peak_key else None
    bandwidth = peak.memory_bandwidth_gbs
    if ops_per_s is None and bandwidth is None:
        return None
    model = read_openvino_model(artifact.path)
    model.reshape(shapes)
    macs, unknown = count_macs(model)
    moved = weight_elements(model) * _BYTES_PER_WEIGHT[target.precision] + input_bytes
    compute_s = 2 * macs / (ops_per_s * 1e12) if ops_per_s else 0.0
    memory_s = moved / (bandwidth * 1e9) if bandwidth else 0.0
    latency_s = max(compute_s, memory_s)
    basis = ("roofline lower bound from the profile's peak figures: max(2 x MACs / peak ops, bytes / bandwidth); "
             "not a measurement")
    if unknown:
        basis += f"; {unknown} compute layers with unknown shapes are not counted"
    return {
        "estimated": True,
        "latency_ms": latency_s * 1e3,
        "throughput_per_s": batch_size / latency_s if latency_s > 0 else None,
        "bound": "compute" if compute_s >= memory_s else "memory",
        "macs": macs,
        "bytes": moved,
        "peak": {peak_key: ops_per_s} if peak_key else None,
        "memory_bandwidth_gbs": bandwidth,
        "basis": basis,
    }
