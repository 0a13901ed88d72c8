"""A causal LM as ONE ONNX decoder graph with a KV cache (prefill and decode), and OpenVINO IR from it.

Graph interface (what `edgekd.runtimes.decoders` runs):
  inputs  input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64, position_ids [batch, seq]
          int64, past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] float32 (past 0 = prefill)
  outputs logits [batch, seq, vocab] float32, present.{i}.key / .value [batch, kv_heads, past + seq, head_dim]

The graph is traced by transformers 5's own exporter (`transformers.exporters.OnnxExporter`, torch.export +
torch.onnx dynamo, with its patches for the cache and masks) on a `DynamicCache` of past length 3 and 2 new
tokens, batch 2, with dynamic axes: it yields exactly this one graph, and a zero-length past runs through it as
a prefill. (A hand-written wrapper around `torch.onnx.export` would duplicate the patches it carries for
`DynamicCache` and the mask builders.) Its input and output names are then renamed to the ones above.

Weight-only quantized layers (`edgekd.lm.weight_quant`) are traced as plain linears over their dequantized
weights; each MatMul whose weight initializer equals those dequantized values is then rewired to integer
codes + `DequantizeLinear` (opset 21): int8 per output channel (axis 1), uint4 blocked along the input dim
(axis 0, `block_size` = group size, uint4 zero points). ONNX Runtime 1.32 fuses both into its integer-weight
`MatMulNBits` kernel (bits 8 and 4), and OpenVINO keeps them as i8 / u4 Constants feeding its compressed
FullyConnected kernel: the files and the runtimes hold integer weights.

A quantized embedding (INT8 per row) is stored once as int8 codes + a scale per row: the token lookup
gathers codes and scales and multiplies them (exactly PyTorch's dequantized row), and a tied head reads the
same codes through a Transpose + `DequantizeLinear` (axis 1), which ONNX Runtime folds and fuses into
`MatMulNBits` (its own scale copy: the fusion takes only a scale no other node reads) and OpenVINO into an
i8 FullyConnected.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgekd.errors import NOT_INPUT_ERRORS, BadInput
from edgekd.export.exporter import quiet_export
from edgekd.io import atomic_path
from edgekd.lm.weight_quant import (WeightOnlyEmbedding, WeightOnlyLinear, dequantize, dequantized_linears,
                                     integer_weights, unwrap)

FORMATS = ("onnx", "openvino")
OPSET = 21  # blocked (int4) DequantizeLinear needs 21
ONNX_NAME = "model.onnx"
OPENVINO_NAME = "openvino_model.xml"
PROTOBUF_LIMIT = 2**31 - 1
# The traced example: distinct sizes, none 0 or 1, so torch.export keeps every axis symbolic.
TRACE_BATCH, TRACE_PAST, TRACE_SEQ = 2, 3, 2


@dataclass(frozen=True)
class LMExport:
    onnx: Path
    openvino_xml: Optional[Path]
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int


def cache_geometry(hf: nn.Module) -> tuple[int, int, int, int]:
    """(layers, kv_heads, head_dim, vocab) of the model's KV cache and output."""
    config = hf.config.get_text_config(decoder=True)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return int(config.num_hidden_layers), kv_heads, head_dim, int(config.vocab_size)


def export_lm(model: nn.Module, out_dir: str | Path, *, formats=FORMATS, opset: int = OPSET,
              traces: TraceCache | None = None) -> LMExport:
    """Write `out_dir/model.onnx` (and `out_dir/openvino_model.xml` + `.bin` when "openvino" is in `formats`).
    Each file appears whole or not at all; nothing outside `out_dir` is written. `traces`: one `TraceCache` over
    a run's exports, so models of one architecture are traced once."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or "onnx" not in formats:
        raise BadInput(f"formats: expected 'onnx' and optionally 'openvino', got {list(formats)}")
    if opset < OPSET:
        raise BadInput(f"opset: the decoder graph needs opset >= {OPSET} (blocked DequantizeLinear), got {opset}")
    hf = unwrap(model)
    layers, kv_heads, head_dim, vocab = cache_geometry(hf)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = trace_decoder(hf, opset, traces)
    rename_io(proto, layers, kv_heads, head_dim)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise BadInput(f"{out_dir / ONNX_NAME}: the graph is {proto.ByteSize() / 1e9:.1f} GB, over ONNX's 2 GB "
                       "single-file limit; quantize the weights (bits 8 or 4) or export a smaller model")
    onnx_path = out_dir / ONNX_NAME
    with atomic_path(onnx_path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    xml = write_openvino(onnx_path, out_dir / OPENVINO_NAME, proto) if "openvino" in formats else None
    return LMExport(onnx_path, xml, layers, kv_heads, head_dim, vocab)


# A float constant in the traced graph equal to no weight of the model may stay as traced in a reused graph only
# up to this many values: the rotary frequencies (head_dim / 2), masks' fill values and scalars.
SMALL_CONSTANT = 256


class TraceCache:
    """The last traced decoder graph (before its integers are stored), reused for the next model of the same
    architecture: the traced graph of a weight-only quantized model is that of its float self (its layers are
    traced as plain ones over the dequantized weights), and a run's variants come in pairs and triples of one
    architecture (teacher FP32 and INT8; student without KD, with KD, quantized), so 5 traces become 2. A trace
    costs ~15 s on the 4-layer test model and minutes on SmolLM2-135M; re-filling the weights, ~1 s.

    Reuse is refused (and the model traced) unless every float initializer of the graph is a weight of the model
    (by name, or by value, transposed or not, with no two different weights alike) or a constant of at most
    SMALL_CONSTANT values, and every parameter of the model feeds one: what the graph holds is then exactly
    the weights, wherever the exporter put them. The export gate checks each variant against PyTorch anyway."""

    def __init__(self):
        self._key: str | None = None
        self._proto: onnx.ModelProto | None = None
        self._sources: dict[str, tuple[str, bool]] = {}  # initializer -> (state_dict key, transposed)

    @staticmethod
    def key(hf: nn.Module, opset: int) -> str:
        return f"{opset}:{hf.config.to_json_string(use_diff=False)}"

    def reuse(self, hf: nn.Module, opset: int, weights: dict[str, np.ndarray]) -> onnx.ModelProto | None:
        """The remembered graph with `weights` (those of `hf`, dequantized) in place, or None."""
        if self._proto is None or self._key != self.key(hf, opset):
            return None
        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        for tensor in proto.graph.initializer:
            source = self._sources.get(tensor.name)
            if source is None:
                continue
            name, transposed = source
            value = weights.get(name)
            value = None if value is None else value.T if transposed else value
            if value is None or value.shape != tuple(tensor.dims):
                return None
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), tensor.name))
        return proto

    def remember(self, hf: nn.Module, opset: int, proto: onnx.ModelProto, weights: dict[str, np.ndarray],
                 parameters: set[str]) -> None:
        """Keep `proto` (a copy) for the next model like `hf`, where its initializers map onto `weights`."""
        sources = _weight_sources(proto, weights, parameters)
        self._key, self._proto, self._sources = None, None, {}
        if sources is not None:
            self._key, self._sources = self.key(hf, opset), sources
            self._proto = onnx.ModelProto()
            self._proto.CopyFrom(proto)


def _weight_sources(proto: onnx.ModelProto, weights: dict[str, np.ndarray],
                    parameters: set[str]) -> dict[str, tuple[str, bool]] | None:
    """Initializer name -> (weight name, transposed) for every float initializer that is a weight; None where the
    graph holds a larger float constant that is none, two different weights alike, or leaves a parameter out."""
    by_value: dict[bytes, list[tuple[str, bool]]] = {}
    for name, value in weights.items():
        by_value.setdefault(_digest(value), []).append((name, False))
        if value.ndim == 2:
            by_value.setdefault(_digest(value.T), []).append((name, True))
    sources, fed = {}, set()
    for tensor in proto.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(tensor)
        if tensor.name in weights and weights[tensor.name].shape == value.shape \
                and np.array_equal(weights[tensor.name], value):
            found = [(tensor.name, False)]
        else:
            found = by_value.get(_digest(value), [])
        if not found:
            if value.size > SMALL_CONSTANT:
                return None
            continue
        if len(found) > 1 and not _one_tensor(found, weights):
            return None  # two weights with equal values: which one this is cannot be told
        sources[tensor.name] = found[0]
        fed.update(name for name, _ in found)
    return sources if parameters <= fed else None


def _one_tensor(found: list[tuple[str, bool]], weights: dict[str, np.ndarray]) -> bool:
    """The candidates are one stored tensor under several names (a tied weight), read one way, not equal values
    by chance."""
    return len({(weights[name].__array_interface__["data"][0], transposed) for name, transposed in found}) == 1


def float_weights(hf: nn.Module) -> tuple[dict[str, np.ndarray], set[str]]:
    """The model's float state as numpy views (tied weights share memory, as in the model), and the names of its
    parameters (those the graph must hold)."""
    weights = {name: t.detach().numpy() for name, t in hf.state_dict(keep_vars=True).items()
               if t.dtype == torch.float32}
    parameters = {name for name, _ in hf.named_parameters(remove_duplicate=False)}
    return weights, parameters


def trace_decoder(hf: nn.Module, opset: int, traces: TraceCache | None = None) -> onnx.ModelProto:
    """The decoder graph as traced by transformers' exporter (or `traces`' last graph of this architecture with
    this model's weights), with quantized weights stored as integers."""
    was_training = hf.training
    hf.eval()
    try:
        with dequantized_linears(hf) as quantized:
            weights, parameters = float_weights(hf)
            proto = traces.reuse(hf, opset, weights) if traces is not None else None
            if proto is None:
                proto = _trace(hf, opset)
                if traces is not None:
                    traces.remember(hf, opset, proto, weights, parameters)
    finally:
        hf.train(was_training)
    share_tied_head(proto)
    embeddings = [layer for layer in quantized if isinstance(layer, WeightOnlyEmbedding)]
    for embedding in embeddings:
        store_integer_embedding(proto, embedding)
    tied = {id(e.weight) for e in embeddings}  # a tied head: stored with its embedding
    store_integer_weights(proto, [layer for layer in quantized
                                  if isinstance(layer, WeightOnlyLinear) and id(layer.weight) not in tied])
    return proto


def _trace(hf: nn.Module, opset: int) -> onnx.ModelProto:
    """transformers' exporter on a small cache-carrying example, serialized without torch's per-node traces."""
    from transformers import DynamicCache
    from transformers.exporters import OnnxConfig, OnnxExporter

    _, kv_heads, head_dim, vocab = cache_geometry(hf)
    config = hf.config.get_text_config(decoder=True)
    generator = torch.Generator().manual_seed(0)
    past = [tuple(torch.randn(TRACE_BATCH, kv_heads, TRACE_PAST, head_dim, generator=generator) for _ in range(2))
            for _ in range(config.num_hidden_layers)]
    total = TRACE_PAST + TRACE_SEQ
    sample = {
        "input_ids": torch.randint(0, vocab, (TRACE_BATCH, TRACE_SEQ), generator=generator),
        "attention_mask": torch.ones(TRACE_BATCH, total, dtype=torch.long),
        "position_ids": torch.arange(TRACE_PAST, total).expand(TRACE_BATCH, -1).contiguous(),
        "past_key_values": DynamicCache(past, config=config),
        "use_cache": True,
    }
    try:
        with quiet_export():
            program = OnnxExporter().export(hf, sample, OnnxConfig(dynamic=True, opset_version=opset)).program
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:  # torch.export / onnxscript raise many types; name the model, keep the cause
        raise BadInput(f"{type(hf).__name__}: transformers' ONNX exporter cannot trace this model with a KV "
                       f"cache: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    import onnx_ir

    proto = onnx_ir.serde.serialize_model(program)
    for node in proto.graph.node:  # torch's per-node stack traces: half the file of a small model
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def share_tied_head(proto: onnx.ModelProto) -> None:
    """A tied lm_head is traced as a second, transposed copy of the embedding matrix (113 MB more on SmolLM2):
    read it through a Transpose of the embedding instead, so the file holds the matrix once."""
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers}
    embeddings = {}
    for name in gathered:
        tensor = initializers[name]
        if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2:
            embeddings[_digest(numpy_helper.to_array(tensor).T)] = name
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        tensor = initializers[node.input[1]]
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        source = embeddings.get(_digest(numpy_helper.to_array(tensor)))
        if source is not None:
            graph.initializer.remove(tensor)
            del initializers[tensor.name]
            graph.node.insert(0, helper.make_node("Transpose", [source], [tensor.name], perm=[1, 0],
                                                  name=f"{tensor.name}.tied"))


def store_integer_weights(proto: onnx.ModelProto, layers: list[WeightOnlyLinear]) -> None:
    """Replace the float weight of each quantized layer's MatMul ([in, out], the transposed dequantized weight)
    by its integer codes and a DequantizeLinear."""
    if not layers:
        return
    wanted: dict[bytes, WeightOnlyLinear] = {}
    for layer in layers:
        codes, scale, zero_point = integer_weights(layer)
        weight_t = dequantize(codes, scale, zero_point, layer.group_size).t().contiguous().numpy()
        wanted[_digest(weight_t)] = layer
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers}
    found: set[int] = set()
    for name in sorted(matmul_weights):
        tensor = initializers[name]
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        layer = wanted.get(_digest(numpy_helper.to_array(tensor)))
        if layer is None:
            continue
        found.add(id(layer))
        graph.initializer.remove(tensor)
        graph.initializer.extend(_integer_initializers(layer, name))
        inputs = [f"{name}.codes", f"{name}.scale"] + ([f"{name}.zero_point"] if layer.bits == 4 else [])
        attrs = {"axis": 1} if layer.bits == 8 else {"axis": 0, "block_size": layer.group_size}
        graph.node.insert(0, helper.make_node("DequantizeLinear", inputs, [name], name=f"{name}.dequantize", **attrs))
    missing = [layer for layer in layers if id(layer) not in found]
    if missing:  # the exporter changed how it lays out a linear's weight: never ship a half-integer file silently
        raise RuntimeError(f"{len(missing)} of {len(layers)} quantized layers have no MatMul weight in the traced "
                           "graph equal to their dequantized weight")


def store_integer_embedding(proto: onnx.ModelProto, embedding: WeightOnlyEmbedding) -> None:
    """Replace the float embedding matrix (read by the token Gather and, where the head is tied, by the head's
    Transpose from `share_tied_head`) by int8 codes [vocab, d] and a scale per row, read by both."""
    codes, scale, _ = (t.numpy() if t is not None else None for t in integer_weights(embedding))
    digest = _digest(dequantize(*integer_weights(embedding), embedding.group_size).numpy())
    graph = proto.graph
    name = next((t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2
                 and _digest(numpy_helper.to_array(t)) == digest), None)
    readers = [n for n in graph.node if name in n.input]
    if name is None or not readers or any(n.op_type not in ("Gather", "Transpose") or n.input[0] != name
                                          for n in readers):
        raise RuntimeError("the quantized embedding has no float matrix in the traced graph read only by Gather and "
                           "the tied head's Transpose: the exporter changed how it lays the embedding out")
    graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
    graph.initializer.extend([numpy_helper.from_array(codes, f"{name}.codes"),
                              numpy_helper.from_array(scale, f"{name}.scale"),
                              numpy_helper.from_array(scale.copy(), f"{name}.head_scale"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}.last_axis")])
    rewritten = []
    for node in graph.node:
        if node not in readers:
            rewritten.append(node)
            continue
        out, stem = node.output[0], node.name or node.output[0]
        if node.op_type == "Gather":  # rows of codes x their scales: the dequantized rows, computed per token
            ids = node.input[1]
            rewritten += [
                helper.make_node("Gather", [f"{name}.codes", ids], [f"{stem}.codes"], name=f"{stem}.codes"),
                helper.make_node("Cast", [f"{stem}.codes"], [f"{stem}.float"], to=TensorProto.FLOAT,
                                 name=f"{stem}.cast"),
                helper.make_node("Gather", [f"{name}.scale", ids], [f"{stem}.scale"], name=f"{stem}.scale"),
                helper.make_node("Unsqueeze", [f"{stem}.scale", f"{name}.last_axis"], [f"{stem}.scale_col"],
                                 name=f"{stem}.unsqueeze"),
                helper.make_node("Mul", [f"{stem}.float", f"{stem}.scale_col"], [out], name=f"{stem}.dequantize")]
        else:  # the tied head: [d, vocab] int8 codes, one scale per output column
            rewritten += [
                helper.make_node("Transpose", [f"{name}.codes"], [f"{stem}.codes"], perm=[1, 0], name=stem),
                helper.make_node("DequantizeLinear", [f"{stem}.codes", f"{name}.head_scale"], [out], axis=1,
                                 name=f"{stem}.dequantize")]
    del graph.node[:]
    graph.node.extend(rewritten)


def _digest(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).digest()


def _integer_initializers(layer: WeightOnlyLinear, name: str) -> list[TensorProto]:
    codes, scale, zero_point = (t if t is None else t.t().contiguous().numpy() for t in integer_weights(layer))
    if layer.bits == 8:
        return [numpy_helper.from_array(codes, f"{name}.codes"), numpy_helper.from_array(scale, f"{name}.scale")]
    return [_uint4_tensor(codes, f"{name}.codes"), numpy_helper.from_array(scale, f"{name}.scale"),
            _uint4_tensor(zero_point, f"{name}.zero_point")]


def _uint4_tensor(values: np.ndarray, name: str) -> TensorProto:
    """uint4 values packed two per byte, the first in the low nibble (ONNX's layout)."""
    flat = values.astype(np.uint8).ravel()
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, list(values.shape), packed.tobytes(), raw=True)


def rename_io(proto: onnx.ModelProto, layers: int, kv_heads: int, head_dim: int) -> None:
    """transformers' names (`past_key_values.layers.{i}.keys`, `cache.layers.{i}.keys`) -> edgekd's interface,
    with the cache inputs' head axes fixed (traced as named axes, which OpenVINO would read as dynamic)."""
    renames = {}
    for i in range(layers):
        for theirs, ours in (("keys", "key"), ("values", "value")):
            renames[f"past_key_values.layers.{i}.{theirs}"] = f"past_key_values.{i}.{ours}"
            renames[f"cache.layers.{i}.{theirs}"] = f"present.{i}.{ours}"
    graph = proto.graph
    expected = {"input_ids", "attention_mask", "position_ids"} | {n for n in renames if n.startswith("past")}
    names = {v.name for v in graph.input}
    outputs = {v.name for v in graph.output}
    if names != expected or outputs != {"logits"} | {n for n in renames if n.startswith("cache")}:
        raise RuntimeError(f"transformers' exporter produced inputs {sorted(names)} and outputs {sorted(outputs)}, "
                           "not the decoder interface edgekd expects")
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
        if value.name.startswith(("past_key_values.", "present.")):
            dims = value.type.tensor_type.shape.dim
            dims[1].dim_value, dims[3].dim_value = kv_heads, head_dim
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def openvino_head_layout(proto: onnx.ModelProto) -> bool:
    """Rewrite a tied INT8 head (Transpose of the embedding codes, then `DequantizeLinear` axis 1: what ONNX Runtime
    fuses) as `DequantizeLinear` axis 0 on the codes, then Transpose: the order OpenVINO's compressed
    FullyConnected recognises (with the Transpose first it folds the head to a float matrix). True if rewritten."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    rewritten = False
    for node in list(graph.node):
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in initializers:
            continue
        position = list(graph.node).index(source)
        graph.node.remove(source)
        graph.node.remove(node)
        graph.node.insert(position, helper.make_node("DequantizeLinear", [source.input[0], node.input[1]],
                                                     [f"{node.output[0]}.rows"], axis=0, name=node.name))
        graph.node.insert(position + 1, helper.make_node("Transpose", [f"{node.output[0]}.rows"], [node.output[0]],
                                                         perm=[1, 0], name=source.name))
        rewritten = True
    return rewritten


def write_openvino(onnx_path: Path, xml: Path, proto: onnx.ModelProto | None = None) -> Path:
    """OpenVINO IR of the ONNX graph (`proto`, the graph at `onnx_path`, where given: a tied INT8 head is laid out
    for OpenVINO first), weights kept as they are (`compress_to_fp16=False`: the default would turn the float
    weights to FP16). The .bin is in place before the .xml that names it."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=xml.parent) as staging:
        source = onnx_path
        if proto is not None:
            laid_out = onnx.ModelProto()
            laid_out.CopyFrom(proto)
            if openvino_head_layout(laid_out):
                source = Path(staging) / onnx_path.name
                source.write_bytes(laid_out.SerializeToString())
        try:
            converted = ov.convert_model(str(source))
        except NOT_INPUT_ERRORS:
            raise
        except Exception as err:
            raise BadInput(f"{onnx_path}: OpenVINO cannot convert the graph: {str(err).splitlines()[0]}") from err
        staged = Path(staging) / xml.name
        ov.save_model(converted, str(staged), compress_to_fp16=False)
        for produced, final in ((staged.with_suffix(".bin"), xml.with_suffix(".bin")), (staged, xml)):
            with atomic_path(final) as tmp:
                shutil.move(str(produced), str(tmp))
    return xml
