"""Latency-aware layer choice: keep in float what INT8 makes slower on the target's runtime.

INT8 is not free: quantize/dequantize work at the edges of integer regions, and layouts the
integer kernels want, can cost more than the kernel gains (ONNX Runtime's own static
quantization makes a small ViT 2.2x slower on this kind of host). So each kind of layer
(conv, depthwise_conv, grouped_conv, gemm, small_gemm, attention_matmul) is timed on the
target's runtime, with the profile's batch size and threads, quantized versus left float.

Measured in context, not as isolated single-layer models: exported alone, every 3x3 conv of a
ResNet-32 measured 1.3-1.5x SLOWER in INT8 on ONNX Runtime (each pays a NCHW->NHWC transpose
and Q/DQ at both edges), while the whole INT8 model ran 1.5x FASTER than FP32 (a chain of
QLinearConvs stays in NHWC uint8). Single layers would have left the CNN float. So: time the
FP32 model and the all-INT8 model; then, smallest kinds first, leave one more kind float and
keep that only if the model gets clearly faster; finally, if INT8 with those choices is clearly
slower than FP32, the whole model stays float. Every comparison is edgekd.bench's interleaved
harness (`time_interleaved`; `clearly_faster`: the rounds' interquartile bands do not overlap and
the p50s differ by more than 5%), so a load spike on a shared machine cannot decide it; a tie keeps
INT8 (a quarter of the weight bytes).
This is measured on the untrained structure before QAT; step 5 of `compress` checks the trained,
exported student against its FP32 self again. Targets this host cannot run are not measured:
their layers stay INT8 (the profile says the device's kernels want it) and the choice says why
it is unmeasured.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.nn_swap import swap_attention
from edgekd.quant.choice import LayerChoice
from edgekd.quant.modules import MatMul
from edgekd.quant.plan import check_skip, layer_kind, make_plan
from edgekd.quant.prepare import calibrate, prepare
from edgekd.quant.qparams import weight_bits_for_target
from edgekd.targets import Target, availability

if TYPE_CHECKING:
    from edgekd.bench import RoundTimes

# A GEMM this small (weights) is dominated by quantize/dequantize overhead on most runtimes.
SMALL_GEMM_WEIGHTS = 16384


def _kind(module: nn.Module, out_shape: tuple[int, ...]) -> str:
    kind = layer_kind(module)
    if kind == "linear" or (kind == "conv" and int(np.prod(out_shape[2:])) == 1):
        return "small_gemm" if module.weight.numel() <= SMALL_GEMM_WEIGHTS else "gemm"
    return "attention_matmul" if kind == "matmul" else kind


def _macs(module: nn.Module, out_shape: tuple[int, ...], in_shapes) -> int:
    if isinstance(module, MatMul):
        a, b = in_shapes
        return int(np.prod(a) * b[-1])
    return int(module.weight.numel() * np.prod(out_shape) / module.weight.shape[0])


def _record_shapes(model: nn.Module, names: list[str], example: tuple) -> dict[str, tuple]:
    """(input shapes, output shape) of each named layer on the example inputs, at batch 1."""
    seen: dict[str, tuple] = {}
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            if name not in seen:
                seen[name] = ([tuple(a.shape[1:]) for a in args if torch.is_tensor(a)], tuple(output.shape))
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(*example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _time_variants(paths: list[Path], feeds: dict[str, np.ndarray], target: Target, rounds: int,
                   round_time_s: float) -> list[RoundTimes]:
    """The artifacts' figures from one interleaved comparison (edgekd.bench.time_interleaved), in the order given."""
    from edgekd.bench import time_interleaved

    timed = time_interleaved(models={str(i): path for i, path in enumerate(paths)}, target=target, inputs=feeds,
                             rounds=rounds, round_time_s=round_time_s, warmup=5)
    return [timed[str(i)] for i in range(len(paths))]


def _artifact(model: nn.Module, example: tuple, work: Path, stem: str, target: Target) -> Path:
    from edgekd.export import export

    openvino = target.runtime == "openvino"
    result = export(model=model, example_inputs=example, out_dir=work, name=stem, static_shapes=True, gate=False,
                    formats=("openvino",) if openvino else ("onnx",))
    return result.openvino_xml if openvino else result.onnx


def _quantized_copy(model: nn.Module, example: tuple, scheme, bits: int, skip) -> nn.Module:
    quantized = prepare(model=model, scheme=scheme, weight_bits=bits, skip=skip)
    calibrate(model=quantized, inputs=[example])
    return quantized.eval()


def choose_layers_for_target(*, model: nn.Module, target: Target, example_inputs, skip=(), rounds: int = 21,
                             time_budget_s: float = 0.03) -> LayerChoice:
    """Decide per layer kind whether INT8 is faster on `target`, in the context of the whole model;
    see the module docstring. `example_inputs`: one input batch (tensor or tuple), re-batched to the
    profile's batch size. Each comparison runs `rounds` interleaved rounds of `time_budget_s` timed
    seconds per artifact (by default edgekd.bench.ROUNDS rounds, about 0.6 s per artifact).
    """
    if not isinstance(target, Target):
        raise BadInput(f"target must be an edgekd Target (edgekd.targets.load_target), got {type(target).__name__}")
    example = tuple(torch.as_tensor(e) for e in (example_inputs if isinstance(example_inputs, (tuple, list))
                                                 else (example_inputs,)))
    example = tuple(e[:1].repeat(target.batch_size, *([1] * (e.dim() - 1))) for e in example)
    model = copy.deepcopy(model)
    swap_attention(model)  # as prepare does: the attention projections and matmuls are layers to time
    skip = check_skip(model, skip)
    plan = make_plan(copy.deepcopy(model), skip=skip, fold_bn=True)
    names = [entry["name"] for entry in plan["layers"]]
    choice = LayerChoice(target=target.name, runtime=target.runtime, measured=False, reason=None)
    if target.precision != "int8":
        choice.reason = f"target precision is {target.precision}: nothing is quantized"
        choice.float_layers = tuple(names)
        return choice
    available, why, _ = availability(target)
    if not available:
        choice.reason = f"not measured: {why}"
        return choice

    from edgekd.bench import clearly_faster

    float_model = copy.deepcopy(model).eval()
    shapes = _record_shapes(float_model, names, example)
    kinds: dict[str, dict] = {}
    for name in names:
        if name not in shapes:
            continue  # never ran on the example: calibration leaves it float anyway
        module = float_model.get_submodule(name)
        in_shapes, out_shape = shapes[name]
        group = kinds.setdefault(_kind(module, out_shape), {"layers": [], "macs": 0})
        group["layers"].append(name)
        group["macs"] += _macs(module, out_shape, [(target.batch_size, *s) for s in in_shapes])
    bits = weight_bits_for_target(target)[0]
    feeds = _feeds(example)
    choice.measured = True
    with tempfile.TemporaryDirectory(prefix="edgekd-latency-") as tmp:
        work = Path(tmp)

        def int8_artifact(left_float: list[str], stem: str) -> Path:
            quantized = _quantized_copy(float_model, example, target.quantization, bits,
                                        tuple(skip) + tuple(left_float))
            return _artifact(quantized, example, work, stem, target)

        fp32_path = _artifact(float_model, example, work, "fp32", target)
        current = int8_artifact([], "int8")
        fp32, current_t = _time_variants([fp32_path, current], feeds, target, rounds, time_budget_s)
        all_int8_ms = current_t.p50
        left_float: list[str] = []
        ordered = sorted(kinds.items(), key=lambda item: item[1]["macs"])
        for index, (kind, group) in enumerate(ordered):
            decision = {"kind": kind, "layers": group["layers"], "macs": group["macs"], "measured": False,
                        "model_ms_kind_int8": None, "model_ms_kind_float": None, "quantize": True}
            if index < len(ordered) - 1:  # the dominant kind is settled by the FP32 comparison below
                candidate = int8_artifact(left_float + group["layers"], f"int8-no-{kind}")
                current_t, candidate_t = _time_variants([current, candidate], feeds, target, rounds, time_budget_s)
                faster = clearly_faster(candidate_t, current_t)
                decision.update(measured=True, model_ms_kind_int8=current_t.p50, model_ms_kind_float=candidate_t.p50,
                                spread_ms={"kind_int8": list(current_t.spread), "kind_float": list(candidate_t.spread)},
                                quantize=not faster)
                if faster:
                    left_float += group["layers"]
                    current, current_t = candidate, candidate_t
            choice.decisions.append(decision)
        if left_float:  # re-time the final choice against FP32 side by side
            fp32, current_t = _time_variants([fp32_path, current], feeds, target, rounds, time_budget_s)
        choice.float_layers = tuple(left_float)
        # Ties go to INT8 (a quarter of the weight bytes at the same speed); float only when INT8 is
        # clearly slower.
        all_float = clearly_faster(fp32, current_t)
        choice.whole_model = {"fp32_ms": fp32.p50, "all_int8_ms": all_int8_ms, "int8_ms": current_t.p50,
                              "all_float": all_float, "fp32_spread_ms": list(fp32.spread),
                              "int8_spread_ms": list(current_t.spread)}
        if all_float:
            choice.reason = f"whole model INT8 {current_t.describe()} vs FP32 {fp32.describe()}"
            choice.float_layers = tuple(names)
    return choice


def _feeds(inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    return {name: t.numpy() for name, t in zip(names, inputs)}
