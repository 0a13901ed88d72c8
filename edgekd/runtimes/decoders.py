"""The exported decoder graph (edgekd.lm.export: one graph, prefill and decode, KV cache as inputs and
outputs) behind the `Decoder` interface on ONNX Runtime and OpenVINO, and which weights each runtime really
keeps as integers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from edgekd.errors import BadInput
from edgekd.runtimes.decoding import Decoder, DecoderState, checked_tokens, truncated
from edgekd.runtimes.sessions import cpu_session, runtime_error_summary

RUNTIMES = ("onnxruntime", "openvino")
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
MAX_POSITIONS = 1 << 20  # bound on the cache a caller can grow (the graph itself has no position limit)


class GraphDecoder:
    """Batch-1 decoding over an opened session: the cache is the graph's `present.*` outputs, fed back as
    `past_key_values.*`; a zero-length past makes the first call a prefill."""

    def __init__(self, path, runtime: str, threads: Optional[int] = None, *, exact: bool = False):
        _check_runtime(path, runtime)
        self.path = str(path)
        self.name = runtime
        self.session = cpu_session(self.path, threads=threads, exact_int_weights=exact)
        inputs = dict(_input_shapes(self.session))
        layers = sorted({int(m.group(1)) for name in inputs if (m := PAST.fullmatch(name))})
        wanted = set(TOKEN_INPUTS) | {f"past_key_values.{i}.{kind}" for i in range(len(layers))
                                      for kind in ("key", "value")}
        if not layers or set(inputs) != wanted:
            raise BadInput(f"{self.path}: not an edgekd decoder graph: inputs {sorted(inputs)}, expected "
                           "input_ids, attention_mask, position_ids and past_key_values.{i}.key/.value")
        head_axes = inputs["past_key_values.0.key"][1::2]
        if not all(isinstance(n, int) and n > 0 for n in head_axes):
            raise BadInput(f"{self.path}: past_key_values.0.key must have fixed kv_heads and head_dim axes, "
                           f"got shape {inputs['past_key_values.0.key']}")
        self.layers = len(layers)
        self.kv_heads, self.head_dim = head_axes
        self.output_names = _output_names(self.session)
        logits = self.output_names.index("logits") if "logits" in self.output_names else None
        vocab = _output_shapes(self.session)[logits][-1] if logits is not None else None
        if not isinstance(vocab, int):
            raise BadInput(f"{self.path}: the graph has no 'logits' output with a fixed vocabulary axis")
        self.vocab_size = vocab

    def start(self) -> DecoderState:
        return DecoderState()

    def feeds(self, token_ids: np.ndarray, state: DecoderState) -> dict[str, np.ndarray]:
        """The graph's inputs for `token_ids` after `state` (also what the memory probe runs: a prefill)."""
        ids = checked_tokens(token_ids, state, vocab_size=self.vocab_size, max_positions=MAX_POSITIONS)
        total = state.length + ids.shape[1]
        feeds = {"input_ids": ids,
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(state.length, total, dtype=np.int64)[None]}
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        for i in range(self.layers):
            key, value = state.past[i] if state.past else (empty, empty)
            feeds[f"past_key_values.{i}.key"] = np.ascontiguousarray(key)
            feeds[f"past_key_values.{i}.value"] = np.ascontiguousarray(value)
        return feeds

    def forward(self, token_ids: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        feeds = self.feeds(token_ids, state)
        ids, total = feeds["input_ids"], feeds["attention_mask"].shape[1]
        try:
            outputs = dict(zip(self.output_names, self.session.run(feeds)))
        except Exception as err:  # both runtimes raise their own classes
            raise BadInput(f"{self.path}: {self.name} fails on {ids.shape[1]} tokens after {state.length} cached: "
                           f"{runtime_error_summary(err)}") from None
        past = [(outputs[f"present.{i}.key"], outputs[f"present.{i}.value"]) for i in range(self.layers)]
        return np.asarray(outputs["logits"], dtype=np.float32), DecoderState(total, past)

    def truncate(self, state: DecoderState, length: int) -> DecoderState:
        return truncated(state, length)


class OrtDecoder(GraphDecoder):
    def __init__(self, path, threads: Optional[int] = None, *, exact: bool = False):
        super().__init__(path, "onnxruntime", threads, exact=exact)


class OvDecoder(GraphDecoder):
    def __init__(self, path, threads: Optional[int] = None, *, exact: bool = False):
        super().__init__(path, "openvino", threads, exact=exact)


def open_decoder(path, runtime: str, threads: Optional[int] = None, *, exact: bool = False) -> Decoder:
    """The decoder graph at `path` (.onnx on onnxruntime, .xml on openvino) on the CPU; `exact`: with the
    arithmetic the graph states (ONNX Runtime: float activations into integer-weight MatMuls, not its
    int8-activation default), the export gate's reference."""
    _check_runtime(path, runtime)
    return (OrtDecoder if runtime == "onnxruntime" else OvDecoder)(path, threads, exact=exact)


def weight_precision(path, runtime: str) -> dict:
    """How many MatMul weights the runtime keeps as int8 / int4 / float after loading `path`:
    {"runtime", "int8", "int4", "float"}. ONNX Runtime: its optimized graph (an int8 or int4 weight runs in
    `MatMulNBits`, a float one in MatMul/Gemm over a float initializer); OpenVINO: the compiled CPU model's
    FullyConnected layers by the precision of their weights. Weight-less matmuls (attention) are not counted."""
    _check_runtime(path, runtime)
    session = cpu_session(path, instrumented=True)
    try:
        counts = _ort_weight_kinds(session) if runtime == "onnxruntime" else _ov_weight_kinds(session)
    finally:
        session.close()
    return {"runtime": runtime, **{kind: counts.get(kind, 0) for kind in ("int8", "int4", "float")}}


def _ort_weight_kinds(session) -> Counter:
    import onnx

    graph = onnx.load(str(Path(session._tmp.name) / "optimized.onnx"), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    counts: Counter = Counter()
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            counts["int8" if bits == 8 else "int4" if bits == 4 else f"int{bits}"] += 1
        elif node.op_type in ("MatMul", "FusedMatMul", "Gemm") and len(node.input) > 1 \
                and node.input[1] in initializers:
            counts["float"] += 1
    return counts


def _ov_weight_kinds(session) -> Counter:
    counts: Counter = Counter()
    for op in session.compute_ops():
        if op.op == "FullyConnected":
            counts["int8" if op.precision == "int8" else "int4" if op.precision in ("u4", "i4") else "float"] += 1
    return counts


def _check_runtime(path, runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise BadInput(f"runtime: expected one of {RUNTIMES}, got {runtime!r}")
    expected = ".xml" if runtime == "openvino" else ".onnx"
    if not str(path).endswith(expected):
        raise BadInput(f"{path}: {runtime} runs a {expected} decoder graph")


def _input_shapes(session) -> list[tuple[str, list]]:
    if hasattr(session, "_compiled"):
        return [(port.get_any_name(), [d.get_length() if d.is_static else None for d in port.get_partial_shape()])
                for port in session._compiled.inputs]
    return [(i.name, [d if isinstance(d, int) else None for d in i.shape]) for i in session._session.get_inputs()]


def _output_shapes(session) -> list[list]:
    if hasattr(session, "_compiled"):
        return [[d.get_length() if d.is_static else None for d in port.get_partial_shape()]
                for port in session._compiled.outputs]
    return [[d if isinstance(d, int) else None for d in o.shape] for o in session._session.get_outputs()]


def _output_names(session) -> list[str]:
    if hasattr(session, "_compiled"):
        return [port.get_any_name() for port in session._compiled.outputs]
    return [o.name for o in session._session.get_outputs()]
