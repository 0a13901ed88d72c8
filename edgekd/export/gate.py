"""The export gate's evidence: do the runtimes agree with PyTorch, and do they really run INT8?

"Really INT8" is read from what each runtime compiled, not from the file: ONNX Runtime's
optimized graph (SessionOptions.optimized_model_filepath) must hold integer kernels (QLinearConv,
QGemm, MatMulIntegerToFloat, ...) for the quantized layers, and OpenVINO's runtime model
(compiled_model.get_runtime_model()) must report u8/i8 'runtimePrecision' on those layers,
because OpenVINO silently dequantizes and runs FP32 when it does not like a QDQ pattern.

The gate fails a quantized model on a runtime that runs none of its quantized layers on integer
kernels (an "INT8" artifact that is FP32 plus overhead there). Partial coverage (measured: OpenVINO
runs q @ k^T attention matmuls in f32 while running the projections in u8) is reported as a
warning with the counts: parity still holds, and edgekd.quant.choose_layers_for_target is what
keeps such layers float when they cost time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgekd.bench.runtimes import openvino_config

# ONNX Runtime kernels that compute a conv/matmul on integers.
ORT_INT8_COMPUTE = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                    "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv"}
OV_COMPUTE = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution", "GroupDeconvolution"}
ONNX_COMPUTE = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
INT8_PRECISIONS = {"u8", "i8"}

TOP1_MIN = 0.99
COSINE_MIN = 0.999


def quantized_compute_nodes(model: onnx.ModelProto) -> int:
    """Conv/Gemm/MatMul nodes that read a DequantizeLinear output (directly or through a Transpose
    or Reshape of it): the layers the runtimes are expected to run on integers."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def from_dequantize(name: str) -> bool:
        node = producers.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape"):
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    return sum(1 for node in model.graph.node
               if node.op_type in ONNX_COMPUTE and all(from_dequantize(i) for i in node.input[:2]))


def ort_session(path: Path, *, optimized_path: Path | None = None, threads: int | None = None,
                provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=[provider])


def ort_int8_kernels(path: Path) -> tuple[dict[str, int], object]:
    """(integer kernel counts in ONNX Runtime's optimized graph, the session)."""
    with tempfile.TemporaryDirectory(prefix="edgekd-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session = ort_session(path, optimized_path=optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ORT_INT8_COMPUTE:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts, session


def ov_compiled(xml: Path, *, device: str = "CPU", threads: int | None = None):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(xml)), device, openvino_config(device, threads=threads))


def ov_int8_kernels(compiled) -> tuple[dict[str, int], dict[str, int]]:
    """(u8/i8 compute layers by type, all compute layers by type) in OpenVINO's runtime model."""
    int8: dict[str, int] = {}
    total: dict[str, int] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in OV_COMPUTE:
            continue
        total[kind] = total.get(kind, 0) + 1
        if info["runtimePrecision"].astype(str) in INT8_PRECISIONS:
            int8[kind] = int8.get(kind, 0) + 1
    return int8, total


def compare(reference: list[np.ndarray], actual: list[np.ndarray], *, task: str) -> dict:
    """Top-1 agreement (classification), mean/min per-sample cosine and max |diff| over all outputs."""
    ref, got = reference[0].astype(np.float64), actual[0].astype(np.float64)
    n = len(ref)
    ref_flat, got_flat = ref.reshape(n, -1), got.reshape(n, -1)
    norms = np.linalg.norm(ref_flat, axis=1) * np.linalg.norm(got_flat, axis=1)
    dots = (ref_flat * got_flat).sum(axis=1)
    # Two all-zero outputs agree perfectly; one zero and one not do not. (inf/NaN outputs give a NaN
    # cosine, which parity_failures refuses, so numpy's warning about it adds nothing.)
    with np.errstate(invalid="ignore"):
        cosine = np.where(norms > 0, dots / np.maximum(norms, 1e-300),
                          np.where((np.abs(ref_flat).sum(1) == 0) & (np.abs(got_flat).sum(1) == 0), 1.0, 0.0))
    result = {
        "samples": int(n),
        "cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float(max(np.abs(r.astype(np.float64) - a.astype(np.float64)).max() if r.size else 0.0
                                  for r, a in zip(reference, actual))),
        # inf/NaN from the runtime (an FP16 overflow, typically) would otherwise slip through as a NaN cosine
        "non_finite": int(sum(a.size - np.isfinite(a).sum() for a in actual)),
    }
    if task == "classification":
        result["top1_agreement"] = float((ref_flat.argmax(axis=1) == got_flat.argmax(axis=1)).mean())
    return result


def parity_failures(parity: dict, *, task: str) -> list[str]:
    problems = []
    if parity.get("non_finite"):
        problems.append(f"{parity['non_finite']} output values are inf or NaN")
    if task == "classification" and not parity["top1_agreement"] >= TOP1_MIN:
        problems.append(f"top-1 agreement {parity['top1_agreement']:.4f} < {TOP1_MIN}")
    if not parity["cosine"] >= COSINE_MIN:  # also catches a NaN cosine
        problems.append(f"output cosine {parity['cosine']:.5f} < {COSINE_MIN}")
    return problems
