"""prepare / calibrate / quantize_ptq: build the fake-quant copy of a model and set its ranges."""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from edgekd.errors import BadInput
from edgekd.nn_swap import swap_attention, swapped_attention
from edgekd.quant.modules import (
    QUANT_LAYER_TYPES,
    FakeQuantizer,
    MatMul,
    QuantEmbedding,
    QuantLinear,
    QuantMatMul,
    _QuantConvMixin,
    quant_conv_from,
    quant_embedding_from,
    quant_linear_from,
    quantizers,
)
from edgekd.quant.observers import check_observer
from edgekd.quant.plan import check_skip, make_plan, matches
from edgekd.quant.qparams import grid, weight_bits_for_host
from edgekd.targets import QuantScheme

PLAN_ATTR = "edgekd_quant_plan"
TRANSFORMER_SMOOTH_ALPHA = 0.95  # NNCF's SmoothQuant alpha for MatMul in its transformer preset
TRANSFORM_NAME = "fake-quant"


def _check_scheme(scheme) -> QuantScheme:
    if isinstance(scheme, QuantScheme):
        return scheme
    if isinstance(scheme, dict):
        try:
            return QuantScheme.model_validate(scheme)
        except ValidationError as err:
            raise BadInput(f"quantization scheme: {str(err).splitlines()[0]}") from None
    raise BadInput(f"scheme must be an edgekd.targets.QuantScheme (a target's 'quantization' block), "
                   f"got {type(scheme).__name__}")


def prepare(*, model: nn.Module, scheme: QuantScheme, skip: Iterable[str] = (), fold_bn: bool = True,
            observer: str = "minmax", lsq: bool = False, weight_bits: int | None = None) -> nn.Module:
    """A fake-quant copy of `model` following `scheme`; quantizers stay off until `calibrate`.

    Every `nn.MultiheadAttention` that can be is first rebuilt from Linear projections and MatMul
    modules (edgekd.nn_swap; same weights and outputs), so its projections and both attention matmuls
    quantize; the plan records which (`attention_swap`) for the checkpoint replay.
    `skip` names layers (or parent modules) to keep in float. `weight_bits=None` picks 8, or 7 on
    x86 hosts whose u8 x s8 kernels saturate (see edgekd.quant.qparams). Layers the quantizer
    cannot handle stay float and are listed by `QuantReport.of(model)`.
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if quantizers(model):
        raise BadInput("model is already fake-quantized (it contains FakeQuantizer modules); prepare the float model")
    scheme = _check_scheme(scheme)
    check_observer(observer)
    if weight_bits is None:
        weight_bits, bits_reason = weight_bits_for_host(scheme)
    else:
        bits_reason = "requested"
    grid(dtype=scheme.weights.dtype, symmetric=scheme.weights.symmetric, bits=weight_bits)  # validates bits
    quantized = copy.deepcopy(model)
    swap = swap_attention(quantized)  # nn.MultiheadAttention -> Linear projections + MatMul modules
    skip = check_skip(quantized, skip)
    plan = make_plan(quantized, skip=skip, fold_bn=fold_bn)
    for entry in plan["float"]:
        if entry["name"] in swap.refused:
            why = swap.refused[entry["name"]]
            entry["reason"] = f"nn.MultiheadAttention not rebuilt from Linear + MatMul modules: {why}"
    if not plan["layers"]:
        why = "; ".join(f"{f['name']}: {f['reason']}" for f in plan["float"]) or (
            "a bare layer: wrap it in nn.Sequential" if type(model) in (nn.Conv1d, nn.Conv2d, nn.Linear)
            else "it has no Conv1d/Conv2d/Linear/MatMul")
        raise BadInput(f"no layer of {type(model).__name__} can be quantized ({why})")
    plan.update(scheme=scheme.model_dump(), weight_bits=weight_bits, weight_bits_reason=bits_reason,
                observer=observer, lsq=bool(lsq), fold_bn=bool(fold_bn), attention_swap=swapped_attention(quantized),
                embeddings=[n for n, m in quantized.named_modules() if type(m) is nn.Embedding and not matches(n, skip)])
    return apply_plan(quantized, plan)


def apply_plan(model: nn.Module, plan: dict) -> nn.Module:
    """Swap in the fake-quant modules a plan describes (in place); also replays checkpoints."""
    swap_attention(model, names=plan.get("attention_swap", ()))  # as prepare did (a no-op after a prune replay)
    scheme = QuantScheme.model_validate(plan["scheme"])
    act_grid = grid(dtype=scheme.activations.dtype, symmetric=scheme.activations.symmetric)
    weight_grid = grid(dtype=scheme.weights.dtype, symmetric=scheme.weights.symmetric, bits=plan["weight_bits"])

    def activation_quantizer(source: str | None) -> FakeQuantizer:
        if source is not None:
            return model.get_submodule(source)
        return FakeQuantizer(grid=act_grid, observer=plan["observer"], learnable=plan["lsq"])

    for entry in plan["layers"]:
        name = entry["name"]
        layer = model.get_submodule(name)
        if isinstance(layer, MatMul):
            new = QuantMatMul(input_quantizer=activation_quantizer(entry["inputs_from"][0]),
                              other_quantizer=activation_quantizer(entry["inputs_from"][1]))
        else:
            weight_quantizer = FakeQuantizer(grid=weight_grid, axis=0 if scheme.weights.per_channel else None,
                                             channels=layer.weight.shape[0], learnable=plan["lsq"])
            if isinstance(layer, nn.Linear):
                new = quant_linear_from(layer, input_quantizer=activation_quantizer(entry["inputs_from"][0]),
                                        weight_quantizer=weight_quantizer)
                if entry.get("smooth"):  # the checkpoint's state dict fills it in
                    new.smooth = torch.ones(layer.in_features)
            else:
                bn = None
                if entry["bn"]:
                    bn = model.get_submodule(entry["bn"])
                    _set_submodule(model, entry["bn"], nn.Identity())
                new = quant_conv_from(
                    layer, input_quantizer=activation_quantizer(entry["inputs_from"][0]),
                    weight_quantizer=weight_quantizer, bn=bn, activation=entry["activation"],
                    output_quantizer=activation_quantizer(None) if entry["output_quantizer"] else None)
        new.train(layer.training)
        device = next((p.device for p in layer.parameters()), None)
        if device is not None:  # new quantizer buffers start on the CPU; keep the layer where it was
            new.to(device)
        _set_submodule(model, name, new)
    row_grid = grid(dtype="int8", symmetric=True)  # a table lookup: no u8 x s8 kernel to saturate, full 8 bits
    for name in plan.get("embeddings", ()):  # plans written before embeddings were quantized have none
        table = model.get_submodule(name)
        quantizer = FakeQuantizer(grid=row_grid, axis=0, channels=table.num_embeddings)
        _set_submodule(model, name, quant_embedding_from(table, weight_quantizer=quantizer))
    setattr(model, PLAN_ATTR, copy.deepcopy(plan))
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def plan_of(model: nn.Module) -> dict:
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        raise BadInput("model is not fake-quantized (no plan found); call edgekd.quant.prepare first")
    return plan


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYER_TYPES)}


def _as_args(batch) -> tuple:
    """A calibration item as positional arguments: a tuple/list is several, anything else one."""
    items = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    return tuple(torch.from_numpy(np.ascontiguousarray(b)) if isinstance(b, np.ndarray) else b for b in items)


def weight_quantizers(model: nn.Module) -> list[FakeQuantizer]:
    return [layer.weight_quantizer for layer in quant_layers(model).values() if hasattr(layer, "weight_quantizer")] \
        + [table.weight_quantizer for table in embeddings(model)]


def embeddings(model: nn.Module) -> list[QuantEmbedding]:
    return [m for m in model.modules() if isinstance(m, QuantEmbedding)]


def activation_quantizers(model: nn.Module) -> list[FakeQuantizer]:
    weights = {id(q) for q in weight_quantizers(model)}
    return [q for q in quantizers(model) if id(q) not in weights]


def _float_pass(model: nn.Module, inputs: Iterable) -> int:
    """Run `inputs` through the model in eval mode without gradients; the number of batches (BadInput names
    one that does not fit). The caller decides what the quantizers do meanwhile."""
    batches = 0
    with torch.no_grad():
        for batch in inputs:
            args = _as_args(batch)
            try:
                model(*args)
            except (RuntimeError, TypeError, ValueError) as err:
                shapes = ", ".join(str(tuple(a.shape)) if torch.is_tensor(a) else type(a).__name__ for a in args)
                raise BadInput(f"calibration batch {batches} (inputs {shapes}) does not fit the model: "
                               f"{str(err).splitlines()[0][:200]}") from None
            batches += 1
    if batches == 0:
        raise BadInput("calibration data is empty: no batch reached the model")
    return batches


def smooth(*, model: nn.Module, inputs: Iterable, alpha: float) -> int:
    """SmoothQuant (Xiao et al., 2023; what NNCF's transformer preset adds before PTQ, alpha 0.95 for
    MatMul): per input channel j of every quantized Linear, s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) over
    `inputs`; the input is multiplied by 1/s before its quantizer, the weight's column j by s. The float
    function stays the same; activation outlier channels move into the per-channel weight grid. Why: the
    all-MiniLM-L6-v2 teacher's FFN inputs span [-7.8, 28.5] (a 0.14 step for values mostly within +-3), a PTQ
    so coarse that the runtimes' float rounding differences flip its roundings in cascade (a 1e-6 relative
    input change alone moved its output cosine to 0.9993): OpenVINO agreed with PyTorch to 0.9974, ONNX
    Runtime to 0.9993. Smoothed (alpha 0.95): 0.9997 and 0.9998, all 36 Linear layers still INT8, and 0.995
    instead of 0.990 cosine to the float teacher. Layers sharing an input quantizer share s. Call before
    `calibrate`; returns how many layers were smoothed."""
    plan = plan_of(model)
    if not 0 < alpha <= 1:
        raise BadInput(f"smoothing alpha must be in (0, 1], got {alpha!r}")
    layers = {name: layer for name, layer in quant_layers(model).items() if isinstance(layer, QuantLinear)}
    if any(layer.smooth is not None for layer in layers.values()):
        raise BadInput("model is already smoothed")
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            peaks[name] = torch.maximum(peaks[name], x) if name in peaks else x
        return hook

    saved = {id(q): q.enabled for q in quantizers(model)}
    was_training = model.training
    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    try:
        for q in quantizers(model):
            q.enabled = False
        _float_pass(model.eval(), inputs)
    finally:
        for handle in handles:
            handle.remove()
        for q in quantizers(model):
            q.enabled = saved[id(q)]
        model.train(was_training)
    groups: dict[int, list[str]] = {}  # layers reading one quantizer read one tensor: one s for all of them
    for name in peaks:
        groups.setdefault(id(layers[name].input_quantizer), []).append(name)
    with torch.no_grad():
        for names in groups.values():
            activation = torch.stack([peaks[n] for n in names]).amax(0)
            weight = torch.stack([layers[n].weight.abs().amax(0) for n in names]).amax(0)
            s = activation.pow(alpha) / weight.pow(1 - alpha)
            s = torch.where((activation > 0) & (weight > 0), s, torch.ones_like(s))  # a dead channel: as it is
            for name in names:
                layers[name].weight.mul_(s)
                layers[name].smooth = (1 / s).to(layers[name].weight.dtype)
    smoothed = set(peaks)
    for entry in plan["layers"]:
        if entry["name"] in smoothed:
            entry["smooth"] = True
    plan["smooth_alpha"] = alpha
    return len(smoothed)


def calibrate(*, model: nn.Module, inputs: Iterable) -> list[str]:
    """Run `inputs` (tensors, or tuples for several model inputs) through the float path, set every
    activation range from its observer and every weight range from the (BN-folded) weights, and
    switch fake quantization on. Returns the names of quantizers that saw no data (left off)."""
    plan_of(model)
    layers = quant_layers(model)
    activations = activation_quantizers(model)
    saved = {id(q): q.enabled for q in quantizers(model)}
    was_training = model.training
    model.eval()
    for q in quantizers(model):
        q.enabled = False
    for q in activations:
        q.observer.reset()
        q.observing = "calibrate"
    try:
        _float_pass(model, inputs)
    except BadInput:
        for q in quantizers(model):
            q.enabled = saved[id(q)]
        model.train(was_training)
        raise
    finally:
        for q in activations:
            q.observing = None
    names = {id(m): n for n, m in model.named_modules()}
    unseen = [names[id(q)] for q in activations if not q.finish_calibration()]
    with torch.no_grad():
        for layer in layers.values():
            if isinstance(layer, _QuantConvMixin):
                layer.weight_quantizer.set_range_from(layer.folded_weight_and_bias()[0])
            elif isinstance(layer, QuantLinear):
                layer.weight_quantizer.set_range_from(layer.weight)
        for table in embeddings(model):
            table.weight_quantizer.set_range_from(table.weight)
    model.train(was_training)
    model.edgekd_quant_plan["uncalibrated"] = unseen
    return unseen


def batches_of(data, *, batch_size: int, max_samples: int | None = None) -> list:
    """Calibration batches from an array, a tuple of arrays (one per model input) or an iterable."""
    if isinstance(data, np.ndarray) or torch.is_tensor(data):
        data = (data,)
        single = True
    else:
        single = False
    if isinstance(data, tuple) and all(isinstance(a, np.ndarray) or torch.is_tensor(a) for a in data):
        n = len(data[0])
        if any(len(a) != n for a in data):
            raise BadInput(f"calibration arrays disagree on sample count: {[len(a) for a in data]}")
        if n == 0:
            raise BadInput("calibration data is empty")
        n = min(n, max_samples) if max_samples else n
        out = []
        for start in range(0, n, batch_size):
            part = tuple(torch.as_tensor(np.asarray(a[start:start + batch_size])) for a in data)
            out.append(part[0] if single else part)
        return out
    return list(data)


def quantize_ptq(*, model: nn.Module, scheme: QuantScheme, calibration, skip: Iterable[str] = (),
                 fold_bn: bool = True, observer: str = "minmax", weight_bits: int | None = None,
                 batch_size: int = 64, max_samples: int | None = 1024, smooth_alpha: float | None = None) -> nn.Module:
    """Post-training quantization: prepare (+ `smooth` with `smooth_alpha`) + calibrate, in eval mode (the
    "quantized teacher")."""
    quantized = prepare(model=model, scheme=scheme, skip=skip, fold_bn=fold_bn, observer=observer,
                        weight_bits=weight_bits)
    batches = batches_of(calibration, batch_size=batch_size, max_samples=max_samples)
    if smooth_alpha is not None:
        smooth(model=quantized, inputs=batches, alpha=smooth_alpha)
    calibrate(model=quantized, inputs=batches)
    return quantized.eval()


def freeze(model: nn.Module, *, observers: bool = True, batch_norm: bool = True) -> None:
    """Stop ranges following the data and/or batch norms updating statistics (QAT after warm-up)."""
    if observers:
        for q in quantizers(model):
            q.frozen = True
            q.observing = None
    if batch_norm:
        for layer in quant_layers(model).values():
            if isinstance(layer, _QuantConvMixin) and layer.bn is not None:
                layer.bn_frozen = True


def checkpoint_transform(model: nn.Module) -> dict:
    """The entry to list in `save_checkpoint(transforms=[...])` so the fake-quant model reloads."""
    return {"name": TRANSFORM_NAME, "config": copy.deepcopy(plan_of(model))}


def replay_transform(model: nn.Module, config: dict, state_dict: dict) -> nn.Module:
    """Checkpoint replay: rebuild the fake-quant modules on a freshly built float model."""
    required = ("version", "layers", "scheme", "weight_bits", "observer", "lsq")
    missing = [k for k in required if k not in config]
    if missing:
        raise BadInput(f"checkpoint transform '{TRANSFORM_NAME}': config lacks {', '.join(missing)}")
    try:
        return apply_plan(model, config)
    except AttributeError as err:
        raise BadInput(f"checkpoint transform '{TRANSFORM_NAME}': the plan names a layer this model lacks "
                       f"({err})") from None
