"""Exact clean-up passes on the exported QDQ graph (each rewrite leaves every output bit-identical).

- fold_constants: evaluate nodes whose inputs are all constants (BN folding arithmetic, weight
  QuantizeLinear, int32 bias rounding) into initializers, so the file stores int8 weights and
  int32 biases behind DequantizeLinear, as runtimes expect. DequantizeLinear itself is never
  folded: it is the marker runtimes fuse into integer kernels.
- drop_noop_activations: a Relu (or Clip(0, m)) reading a DequantizeLinear whose zero point is
  the grid minimum is an identity (the values are already >= 0 and <= m); it sits there because
  the quantizer absorbed the activation. Removing it lets the next QuantizeLinear meet the DQ.
- drop_requantize_pairs: DequantizeLinear -> QuantizeLinear with identical scale and zero point
  returns the same integers; consumers of the Q read the original integers directly.
- gather_quantized_rows: an INT8 embedding table (DequantizeLinear per row -> Gather) would be
  dequantized whole on every run (ONNX Runtime never folds a DequantizeLinear): gather the int8
  rows first, then scale just those (Gather -> Cast -> Mul by the gathered row scales). Same values.
- drop_export_traces: the exporter's debugging annotations (see its docstring); they change no
  value, only the file's size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

_QMIN = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            values[node.output[0]] = np.asarray(ReferenceEvaluator(node).run(None, {})[0])
    return values


def _replace_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers nothing reads (iterated: removal can orphan more)."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        for node in dead:
            model.graph.node.remove(node)
        if not dead:
            break
    used = {name for node in model.graph.node for name in node.input} | graph_outputs
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def fold_constants(model: onnx.ModelProto) -> int:
    """Replace constant-input nodes (except DequantizeLinear) by initializers; returns nodes folded."""
    constants = _constants(model)
    folded = 0
    for node in list(model.graph.node):
        if node.op_type in ("DequantizeLinear", "Constant") or node.domain not in ("", "ai.onnx"):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        inputs = [name for name in node.input if name]
        if not inputs or not all(name in constants for name in inputs):
            continue
        feeds = {name: constants[name] for name in inputs}
        results = ReferenceEvaluator(node).run(None, feeds)
        model.graph.node.remove(node)
        for name, value in zip(node.output, results):
            value = np.asarray(value)
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            constants[name] = value
        folded += 1
    _drop_unused(model)
    return folded


def _dequantize_params(node: onnx.NodeProto, constants: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a per-tensor Q/DQ node with constant parameters, else None."""
    if len(node.input) < 3 or node.input[1] not in constants or node.input[2] not in constants:
        return None
    scale, zero = constants[node.input[1]], constants[node.input[2]]
    if scale.size != 1 or zero.size != 1:
        return None
    return scale.reshape(()), zero.reshape(())


def drop_noop_activations(model: onnx.ModelProto) -> int:
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    dropped = 0
    for node in list(model.graph.node):
        if node.op_type not in ("Relu", "Clip") or node.output[0] in graph_outputs:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        params = _dequantize_params(source, constants)
        if params is None or _QMIN.get(params[1].dtype) != int(params[1]):
            continue
        if node.op_type == "Clip":
            low = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            high = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if low is None or high is None or float(low) > 0:
                continue
            top = (np.iinfo(params[1].dtype).max - int(params[1])) * float(params[0])
            if top > float(high):
                continue
        _replace_uses(model, node.output[0], node.input[0])
        model.graph.node.remove(node)
        dropped += 1
    _drop_unused(model)
    return dropped


def drop_requantize_pairs(model: onnx.ModelProto) -> int:
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    dropped = 0
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.output[0] in graph_outputs:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        mine, theirs = _dequantize_params(node, constants), _dequantize_params(source, constants)
        if mine is None or theirs is None or mine[1].dtype != theirs[1].dtype:
            continue
        if not (np.array_equal(mine[0], theirs[0]) and np.array_equal(mine[1], theirs[1])):
            continue
        _replace_uses(model, node.output[0], source.input[0])
        model.graph.node.remove(node)
        dropped += 1
    _drop_unused(model)
    return dropped


def drop_export_traces(model: onnx.ModelProto) -> int:
    """Remove the dynamo exporter's annotations (each node's Python stack trace, FX node and module
    path, the ExportedProgram's graph signature) and the shape records of values no node produces
    (weights folding removed or turned into initializers, which carry their own type); returns how
    many were dropped. A QDQ graph has several nodes per quantized layer, so these outweighed the
    int8 weights: a pruned MobileNet's INT8 file was 0.55 MB against its FP32 export's 0.28 MB.
    They also wrote the build machine's paths into the artifact and its hash."""
    live = {name for node in model.graph.node for name in node.output}
    stale = [info for info in model.graph.value_info if info.name not in live]
    for info in stale:
        model.graph.value_info.remove(info)
    annotated = [model.graph, *model.graph.node, *model.graph.value_info, *model.graph.initializer]
    dropped = len(stale) + sum(len(item.metadata_props) for item in annotated)
    for item in annotated:
        item.ClearField("metadata_props")
    return dropped


def gather_quantized_rows(model: onnx.ModelProto) -> int:
    """Gather of a per-row DequantizeLinear of a constant int8 table (zero points 0) -> Gather of the int8
    rows, Cast, Mul by the gathered row scales; returns the lookups rewritten."""
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    rewritten = 0
    for gather in [n for n in model.graph.node if n.op_type == "Gather"]:
        dq = producers.get(gather.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or _attribute(gather, "axis", 0) != 0:
            continue
        table, scale = constants.get(dq.input[0]), constants.get(dq.input[1])
        zero = constants.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if (table is None or scale is None or table.dtype != np.int8 or table.ndim != 2
                or _attribute(dq, "axis", 1) != 0 or scale.shape != (table.shape[0],)
                or (zero is not None and np.any(zero != 0))):
            continue
        rows_scale = f"{dq.input[1]}.rows"
        if rows_scale not in constants:
            model.graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, 1).astype(np.float32),
                                                                   rows_scale))
            constants[rows_scale] = scale
        out, ids = gather.output[0], gather.input[1]
        rows, values, scales = f"{out}.int8_rows", f"{out}.rows", f"{out}.row_scales"
        at = list(model.graph.node).index(gather)
        model.graph.node.remove(gather)
        for offset, node in enumerate([
                onnx.helper.make_node("Gather", [dq.input[0], ids], [rows], axis=0),
                onnx.helper.make_node("Cast", [rows], [values], to=onnx.TensorProto.FLOAT),
                onnx.helper.make_node("Gather", [rows_scale, ids], [scales], axis=0),
                onnx.helper.make_node("Mul", [values, scales], [out])]):
            model.graph.node.insert(at + offset, node)
        rewritten += 1
    if rewritten:
        _drop_unused(model)
    return rewritten


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def clean_qdq_graph(model: onnx.ModelProto) -> dict:
    """All passes, to a fixed point; returns how many rewrites each made (for the export report)."""
    counts = {"folded": fold_constants(model), "noop_activations": 0, "requantize_pairs": 0,
              "quantized_lookups": gather_quantized_rows(model)}
    while True:
        acts, pairs = drop_noop_activations(model), drop_requantize_pairs(model)
        counts["noop_activations"] += acts
        counts["requantize_pairs"] += pairs
        if not acts and not pairs:
            counts["export_traces"] = drop_export_traces(model)
            return counts
