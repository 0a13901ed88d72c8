"""Where the quantizers go: a plain, JSON-able plan computed from the model's graph.

ONNX Runtime only fuses a conv into QLinearConv when a QuantizeLinear consumes its output, and
each extra Q/DQ pair between two integer kernels costs a float pass over the tensor (which is
how a naively quantized ViT ends up 2.2x slower). So, from a torch.fx trace:

- every quantized layer quantizes its input; layers reading the same tensor share ONE quantizer;
- a conv folds the batch norm it feeds (if nothing else reads the conv's output);
- a conv whose result (after that BN and a ReLU/ReLU6 directly on it) also flows anywhere other
  than a quantized layer gets an output quantizer, placed after the ReLU, and shared with the
  quantized layers reading that tensor; a conv feeding only quantized layers needs none (their
  input quantizer is its output Q, and the runtime drops the ReLU in between as a no-op);
- Linear and MatMul outputs stay float (QGemm / MatMulIntegerToFloat produce float directly).

PyTorch's transformer modules (nn.TransformerEncoder/DecoderLayer, ...) are traced into along
their Python path, so the Linear and MatMul layers inside them are seen (`prepare` first rebuilds
their nn.MultiheadAttention from Linear + MatMul modules: edgekd.nn_swap).

Models torch.fx cannot trace (data-dependent control flow, e.g. most Hugging Face models) fall
back to module order: BN folded only where it follows its conv inside an nn.Sequential, no output
quantizers; the plan says so. The plan is stored in checkpoints, so a reload rebuilds exactly
the same modules without tracing again.
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekd.errors import BadInput
from edgekd.quant.modules import MatMul

PLAN_VERSION = 1
_BN_FOR = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d}
_UNSUPPORTED = {
    nn.ConvTranspose1d: "transposed convolution has no fused integer kernel path in this quantizer",
    nn.ConvTranspose2d: "transposed convolution has no fused integer kernel path in this quantizer",
    nn.ConvTranspose3d: "transposed convolution has no fused integer kernel path in this quantizer",
    nn.Conv3d: "3-D convolution is not supported by the quantizer",
    nn.LSTM: "recurrent layers are not supported by the quantizer",
    nn.GRU: "recurrent layers are not supported by the quantizer",
    nn.RNN: "recurrent layers are not supported by the quantizer",
    nn.MultiheadAttention: "nn.MultiheadAttention reads its projection weights directly (use Linear + MatMul modules)",
    nn.Bilinear: "bilinear layers are not supported by the quantizer",
}
_RELU_FUNCTIONS = {torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}


def layer_kind(module: nn.Module) -> str:
    """conv / depthwise_conv / grouped_conv / linear / matmul, from the layer's own hyperparameters."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups == 1:
            return "conv"
        return "depthwise_conv" if module.groups == module.in_channels else "grouped_conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return "matmul"


def _quantizable(module: nn.Module) -> bool:
    return type(module) in (nn.Conv1d, nn.Conv2d, nn.Linear, MatMul)


def _why_not(name: str, module: nn.Module, parents: dict[str, nn.Module]) -> str | None:
    """Why a compute layer cannot be quantized, or None if it is not a compute layer at all."""
    for kind, reason in _UNSUPPORTED.items():
        if type(module) is kind:
            return f"{kind.__name__}: {reason}"
    parent = parents.get(name)
    if isinstance(module, nn.Linear) and isinstance(parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention, whose fused kernel reads this weight directly"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not _quantizable(module):
        base = next(b for b in (nn.Conv1d, nn.Conv2d, nn.Linear) if isinstance(module, b)).__name__
        return f"{type(module).__name__} is a subclass of {base}; only exact {base} layers are swapped"
    if type(module) in (nn.Conv1d, nn.Conv2d) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} exports a Pad between the quantizer and the conv"
    return None


def matches(name: str, patterns: Iterable[str]) -> bool:
    """`name` is one of `patterns` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


def check_skip(model: nn.Module, skip: Iterable[str]) -> tuple[str, ...]:
    skip = tuple(skip)
    names = {name for name, _ in model.named_modules()}
    unknown = [s for s in skip if not any(n == s or n.startswith(s + ".") for n in names)]
    if unknown:
        raise BadInput(f"skip names no layer of the model: {', '.join(unknown)}")
    return skip


def _encoder_layer_flow(layer, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    """nn.TransformerEncoderLayer's Python path (its forward first branches on shapes and fast-path checks)."""
    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + layer._ff_block(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return layer.norm2(x + layer._ff_block(x))


def _encoder_flow(encoder, src, mask=None, src_key_padding_mask=None, is_causal=None):
    """nn.TransformerEncoder without its nested-tensor and causal-mask detection (shape checks)."""
    for layer in encoder.layers:
        src = layer(src, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
    return encoder.norm(src) if encoder.norm is not None else src


def _decoder_flow(decoder, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                  memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
    for layer in decoder.layers:
        tgt = layer(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                    memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=bool(tgt_is_causal),
                    memory_is_causal=memory_is_causal)
    return decoder.norm(tgt) if decoder.norm is not None else tgt


def _transformer_flow(model, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                      tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                      memory_is_causal=False):
    memory = model.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return model.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


# torch.fx keeps every torch.nn module a leaf, so the layers inside PyTorch's transformer modules
# were never seen; the plan traces into them, along their Python path (same modules, same tensors:
# the plan only needs who reads what). None: the module's own forward traces as it is.
_TRACE_INTO = {nn.TransformerEncoderLayer: _encoder_layer_flow, nn.TransformerEncoder: _encoder_flow,
               nn.TransformerDecoderLayer: None, nn.TransformerDecoder: _decoder_flow,
               nn.Transformer: _transformer_flow}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _TRACE_INTO:
            return False
        return isinstance(m, MatMul) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        flow = _TRACE_INTO.get(type(m))
        if flow is not None:
            forward = functools.partial(flow, m)
        return super().call_module(m, forward, args, kwargs)


def _activation(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'relu' / 'relu6' if `node` applies that activation to `source` alone, else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if type(module) is nn.ReLU:
            return "relu"
        if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0.0, 6.0)):
            return "relu6"
        return None
    if not node.args or node.args[0] is not source:
        return None
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return _RELU_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return _RELU_METHODS[node.target]
    return None


def _operands(node: fx.Node, module: nn.Module) -> list[fx.Node | None]:
    """The graph inputs a quantized layer quantizes: one, or two for MatMul."""
    count = 2 if isinstance(module, MatMul) else 1
    args = list(node.args[:count])
    return [a if isinstance(a, fx.Node) else None for a in args] + [None] * (count - len(args))


def make_plan(model: nn.Module, *, skip: Iterable[str], fold_bn: bool) -> dict:
    """Decide, for every Conv1d/Conv2d/Linear/MatMul, whether and how it is quantized."""
    parents = {f"{pname}.{cname}" if pname else cname: parent
               for pname, parent in model.named_modules() for cname, _ in parent.named_children()}
    candidates: dict[str, nn.Module] = {}
    float_layers: list[dict] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p["name"] + ".") for p in float_layers):
            continue
        reason = _why_not(name, module, parents)
        if reason is not None:
            float_layers.append({"name": name, "reason": reason})
        elif _quantizable(module):
            if matches(name, skip):
                float_layers.append({"name": name, "reason": "skipped on request"})
            else:
                candidates[name] = module
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable Python
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        layers = _module_order_plan(model, candidates, fold_bn=fold_bn)
        how = f"module order (torch.fx could not trace the model: {type(err).__name__}: {first})"
    else:
        layers, never_called = _graph_plan(graph, model, candidates, fold_bn=fold_bn)
        float_layers += [{"name": n, "reason": "never called as a module in forward"} for n in never_called]
        how = "torch.fx graph"
    return {"version": PLAN_VERSION, "graph": how, "layers": layers, "float": float_layers}


def _layer_entry(name: str, module: nn.Module) -> dict:
    return {"name": name, "type": type(module).__name__, "kind": layer_kind(module), "bn": None, "activation": None,
            "output_quantizer": False, "inputs_from": [None] * (2 if isinstance(module, MatMul) else 1)}


def _graph_plan(graph: fx.Graph, model: nn.Module, candidates: dict[str, nn.Module], *, fold_bn: bool):
    modules = dict(model.named_modules())
    sites: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in candidates:
            sites.setdefault(node.target, []).append(node)
    module_calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            module_calls[node.target] = module_calls.get(node.target, 0) + 1
    never_called = [n for n in candidates if n not in sites]
    # A layer called more than once has several inputs; it keeps a private input quantizer.
    single = {name: nodes[0] for name, nodes in sites.items() if len(nodes) == 1}

    def quantized_reader(user: fx.Node, tensor: fx.Node) -> bool:
        if user.op != "call_module" or user.target not in single:
            return False
        return tensor in _operands(user, candidates[user.target])

    entries: dict[str, dict] = {}
    owner_of: dict[fx.Node, str] = {}  # tensor -> path of the quantizer that owns it
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in sites:
            continue
        name, module = node.target, candidates[node.target]
        entry = entries[name] = _layer_entry(name, module)
        if name in single:
            for i, operand in enumerate(_operands(node, module)):
                quantizer = "input_quantizer" if i == 0 else "other_quantizer"
                if operand is None:
                    continue
                if operand in owner_of:
                    entry["inputs_from"][i] = owner_of[operand]
                else:
                    owner_of[operand] = f"{name}.{quantizer}"
        if name not in single or not isinstance(module, (nn.Conv1d, nn.Conv2d)):
            continue
        tail = node
        bn_type = _BN_FOR[type(module)]
        users = list(tail.users)
        if fold_bn and len(users) == 1 and users[0].op == "call_module":
            bn = modules[users[0].target]
            if (type(bn) is bn_type and module_calls.get(users[0].target) == 1 and bn.track_running_stats
                    and bn.running_mean is not None and bn.num_features == module.out_channels):
                entry["bn"] = users[0].target
                tail = users[0]
        users = list(tail.users)
        activation = _activation(users[0], tail, modules) if len(users) == 1 else None
        after_act = users[0] if activation else tail
        if all(quantized_reader(u, after_act) for u in after_act.users) and after_act.users:
            continue  # the readers' shared input quantizer is this conv's output Q
        if activation:
            entry["activation"] = activation
            tail = after_act
        entry["output_quantizer"] = True
        owner_of[tail] = f"{name}.output_quantizer"
    return list(entries.values()), never_called


def _module_order_plan(model: nn.Module, candidates: dict[str, nn.Module], *, fold_bn: bool) -> list[dict]:
    entries = {name: _layer_entry(name, module) for name, module in candidates.items()}
    if fold_bn:
        for parent_name, parent in model.named_modules():
            if not isinstance(parent, nn.Sequential):
                continue
            children = list(parent.named_children())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                full = f"{parent_name}.{conv_name}" if parent_name else conv_name
                if (full in entries and type(conv) in _BN_FOR and type(bn) is _BN_FOR[type(conv)]
                        and bn.track_running_stats and bn.running_mean is not None
                        and bn.num_features == conv.out_channels):
                    entries[full]["bn"] = f"{parent_name}.{bn_name}" if parent_name else bn_name
    return list(entries.values())

