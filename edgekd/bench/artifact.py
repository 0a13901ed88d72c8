"""What a deployable artifact (`.onnx` or OpenVINO `.xml` + `.bin`) is, before any device runs it.

Reads the declared inputs, the size on disk including side files, and whether the graph
is quantized, so a malformed file fails here with its name instead of deep in a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from edgekd.errors import BadInput

Dim = Union[int, str, None]  # fixed size, named dynamic axis, or unnamed dynamic axis

MIB = float(2**20)  # edgekd reports MB as MiB, the unit RSS and file sizes share

# ONNX ops whose presence means the graph was quantized (QDQ or QOperator format).
_ONNX_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                   "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[Dim, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str  # "onnx" | "openvino"
    files: tuple[Path, ...]  # everything that must ship: the model and its weight files
    inputs: tuple[InputSpec, ...]
    quantized: bool  # the graph holds quantize/dequantize (or FakeQuantize) ops

    @property
    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.files) / MIB


def load_artifact(path: str | Path) -> Artifact:
    """Validate `path` and read what benchmarking needs from it; BadInput names the file at fault."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix == ".xml":
        return _load_openvino_ir(path)
    raise BadInput(f"{path}: unsupported model format '{path.suffix}' (expected .onnx or an OpenVINO .xml)")


def _load_onnx(path: Path) -> Artifact:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as err:
        raise BadInput(f"{path}: not a valid ONNX model ({err})") from None
    graph = model.graph
    if not graph.node or not graph.output:
        raise BadInput(f"{path}: not a valid ONNX model (the graph has no nodes or no outputs)")
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue  # old exporters list weights as graph inputs
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise BadInput(f"{path}: input '{value.name}' is not a tensor; edgekd benchmarks tensor inputs only")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{path}: input '{value.name}' has an unsupported element type {tensor.elem_type}") from None
        if dtype.kind not in "biuf":
            raise BadInput(f"{path}: input '{value.name}' has element type {dtype}; only numeric inputs can be fed")
        dims = tuple(_onnx_dim(d) for d in tensor.shape.dim)
        inputs.append(InputSpec(value.name, dims, dtype))
    files = (path, *_external_data_files(model, path))
    quantized = any(node.op_type in _ONNX_QUANT_OPS or node.op_type.startswith("QLinear")
                    for node in _all_nodes(graph))
    return Artifact(path, "onnx", files, tuple(inputs), quantized)


def _onnx_dim(dim) -> Dim:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    return dim.dim_param or None


def _all_nodes(graph):
    """Nodes of `graph` and of every subgraph (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _all_tensors(graph):
    yield from graph.initializer
    for node in _all_nodes(graph):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _external_data_files(model, path: Path) -> list[Path]:
    """The side files holding tensors stored outside the .onnx (large models)."""
    from onnx.external_data_helper import uses_external_data

    locations: dict[str, Path] = {}
    for tensor in _all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        resolved = (path.parent / location).resolve()
        if not location or not resolved.is_file():
            raise BadInput(f"{path}: tensor '{tensor.name}' points to missing external data file '{location}'")
        locations[location] = resolved
    return sorted(locations.values())


def _load_openvino_ir(path: Path) -> Artifact:
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise BadInput(f"{path}: OpenVINO IR needs its weights file {weights.name} beside it")
    model = read_openvino_model(path)
    inputs = []
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic:
            raise BadInput(f"{path}: input '{port.get_any_name()}' has a dynamic rank; edgekd needs a known rank")
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
        inputs.append(InputSpec(port.get_any_name(), dims, np.dtype(port.get_element_type().to_dtype())))
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    return Artifact(path, "openvino", (path, weights), tuple(inputs), quantized)


def read_openvino_model(path: Path):
    """`Core.read_model` (reads .xml and .onnx) with its errors turned into BadInput."""
    from edgekd.runtimes import openvino_core, runtime_error_summary

    try:
        return openvino_core().read_model(str(path))
    except RuntimeError as err:
        raise BadInput(f"{path}: OpenVINO cannot read the model: {runtime_error_summary(err)}") from None
