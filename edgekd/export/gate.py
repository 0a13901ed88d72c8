"""The export gate's evidence: do the runtimes agree with PyTorch, and do they really run INT8?

"Really INT8" is read from what each runtime compiled, not from the file, through the runtime
layer (edgekd.runtimes, the same compute-op table the benchmark's precision verdict reads): ONNX
Runtime's optimized graph must hold integer kernels (QLinearConv, QGemm, MatMulIntegerToFloat,
...) for the quantized layers, and OpenVINO's runtime model must report u8/i8 'runtimePrecision'
on those layers, because OpenVINO silently dequantizes and runs FP32 when it does not like a QDQ
pattern.

The gate fails a quantized model on a runtime that runs none of its quantized layers on integer
kernels (an "INT8" artifact that is FP32 plus overhead there). Partial coverage (measured: OpenVINO
runs q @ k^T attention matmuls in f32 while running the projections in u8) is reported as a
warning with the counts: parity still holds, and edgekd.tune.choose_layers_for_target is what
keeps such layers float when they cost time.
"""

from __future__ import annotations

import numpy as np
import onnx

# ONNX compute nodes that, fed by DequantizeLinear, the runtimes are expected to run on integers.
ONNX_COMPUTE = {"Conv", "Gemm", "MatMul", "ConvTranspose"}

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
