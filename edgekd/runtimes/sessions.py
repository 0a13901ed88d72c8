"""One inference session per runtime (ONNX Runtime, OpenVINO) behind the same small interface.

Everything in edgekd that opens a model on a runtime (the export gate, predict, the benchmark,
the latency-aware quantizer) opens it here, so "which kernels ran" and "in which precision"
have one answer. A session binds pre-allocated inputs once and then runs without per-call
conversion, so the timing loop measures the runtime, not Python glue; `run` is the plain
call for parity and predictions. An *instrumented* session additionally records per-layer times
and exposes the graph the runtime really executes; it is kept apart from the timed session
because profiling itself costs time.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from edgekd.errors import BadInput
from edgekd.runtimes.ops import ONNX_FLOAT_TYPES, ORT_FLOAT_OPS, ORT_INT8_OPS, OV_COMPUTE_LAYERS, OV_PRECISIONS

PROFILE_WARMUP = 3  # untimed runs before per-layer times are recorded (first runs allocate and JIT)


@dataclass(frozen=True)
class SessionConfig:
    """Everything needed to open the same session again, e.g. in the memory-probe child process."""

    model: str
    runtime: str  # "onnxruntime" | "openvino"
    device: str  # ONNX Runtime execution provider or OpenVINO device
    threads: Optional[int] = None
    static_shapes: Optional[dict[str, list[int]]] = None  # compile for exactly these input shapes
    named_dims: dict[str, int] = field(default_factory=dict)  # values of named dynamic axes
    cpu_mem_arena: bool = True  # ONNX Runtime only; off when measuring memory
    # ONNX Runtime only: run integer-weight MatMuls (MatMulNBits) on float activations, as the exported graph
    # says, instead of ORT's CPU default of quantizing each 32-block of activations to int8 (accuracy_level 4).
    # The export gate's reference arithmetic; deployment keeps the default (weight-INT8 SmolLM2 layers:6
    # student, this project's VNNI host: 250 tokens/s at level 4, 56 exact; 6 of 8 greedy prompts identical).
    exact_int_weights: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SessionConfig":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class ComputeOp:
    name: str
    op: str
    precision: str  # "int8" | "fp32" | "fp16" | "bf16" | the runtime's own word


@dataclass(frozen=True)
class LayerTime:
    name: str
    op: str
    exec_type: str  # OpenVINO kernel (e.g. jit_avx2_I8) or ONNX Runtime execution provider
    time_ms: float  # mean per inference


class Session(Protocol):
    def input_names(self) -> list[str]: ...
    def fixed_batch(self) -> Optional[int]: ...
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...
    def bind(self, feeds: dict[str, np.ndarray]) -> None: ...
    def infer(self) -> None: ...
    def compute_ops(self) -> list[ComputeOp]: ...
    def runtime_settings(self) -> dict[str, str]: ...
    def profile_layers(self, runs: int) -> list[LayerTime]: ...
    def close(self) -> None: ...


def open_session(config: SessionConfig, *, instrumented: bool = False) -> Session:
    """Load the model on its runtime; BadInput (naming the file) when the runtime rejects it."""
    if config.runtime == "onnxruntime":
        return OrtSession(config, instrumented=instrumented)
    if config.runtime == "openvino":
        return OvSession(config, instrumented=instrumented)
    raise BadInput(f"unknown runtime '{config.runtime}' (expected onnxruntime or openvino)")


def cpu_session(path, *, instrumented: bool = False, threads: Optional[int] = None,
                exact_int_weights: bool = False) -> Session:
    """`path` (.onnx on ONNX Runtime, .xml on OpenVINO) on this host's CPU, as the gate and predict run it."""
    openvino = str(path).endswith(".xml")
    return open_session(SessionConfig(model=str(path), runtime="openvino" if openvino else "onnxruntime",
                                      device="CPU" if openvino else "CPUExecutionProvider", threads=threads,
                                      exact_int_weights=exact_int_weights and not openvino),
                        instrumented=instrumented)


def runtime_error_summary(err: BaseException) -> str:
    """The line of a runtime exception that says what is wrong (not where in the C++ it was)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(err).__name__])[0]


@functools.lru_cache(maxsize=1)
def openvino_core():
    import openvino as ov

    return ov.Core()


def openvino_config(device: str, *, threads: Optional[int] = None, perf_count: bool = False) -> dict:
    """Compile properties for every OpenVINO model edgekd runs (bench, export gate, predict).

    The CPU plugin runs an FP32 model in bf16 by default where the CPU has AVX512_BF16 or AMX
    (measured: an FP32 IR executes bf16 on an AVX512_BF16 EPYC), so every "FP32" figure would
    silently be a bf16 one. The CPU is pinned to f32, which is what FP32 artifacts are and what the
    float parts of INT8 QDQ artifacts are; GPU and NPU keep their own default (f16, the precision
    their FP16 profiles ask for). The bench reads the effective value back (`runtime_settings`).
    """
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if device.split(".")[0] == "CPU":
        config["INFERENCE_PRECISION_HINT"] = "f32"
        # Integer-weight MatMuls (weight-only INT8/INT4 LMs) run on float activations, as exported: the CPU
        # plugin otherwise quantizes them to int8 per group on the fly, which was both slower and inexact here
        # (weight-INT8 SmolLM2 layers:6 student: 163 tokens/s and 2 of 4 greedy prompts identical, against 205
        # tokens/s and 4 of 4 with it off). Static INT8 QDQ graphs are not affected.
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if perf_count:
        config["PERF_COUNT"] = True
    return config


class OrtSession:
    def __init__(self, config: SessionConfig, *, instrumented: bool = False):
        import onnxruntime as ort

        self.config = config
        self._tmp = tempfile.TemporaryDirectory(prefix="edgekd-ort-") if instrumented else None
        self._session = None
        self._profiling = instrumented  # until end_profiling() writes the trace
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optimized-graph dump warns about hardware-specific ops
        options.enable_cpu_mem_arena = config.cpu_mem_arena
        if config.exact_int_weights:
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")  # fp32 compute
        if config.threads:
            options.intra_op_num_threads = config.threads
        if config.static_shapes is not None:
            for name, value in config.named_dims.items():
                options.add_free_dimension_override_by_name(name, value)
        if self._tmp is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._tmp.name) / "profile")
            options.optimized_model_filepath = str(Path(self._tmp.name) / "optimized.onnx")
        providers = [config.device] + (["CPUExecutionProvider"] if config.device != "CPUExecutionProvider" else [])
        try:
            self._session = ort.InferenceSession(config.model, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind classes, not one base
            self.close()
            raise BadInput(f"{config.model}: ONNX Runtime cannot load the model on {config.device}: "
                           f"{runtime_error_summary(err)}") from None
        self._binding = None
        self._feeds: dict[str, np.ndarray] = {}

    def input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    def fixed_batch(self) -> Optional[int]:
        first = self._session.get_inputs()[0].shape[0]
        return first if isinstance(first, int) else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output for `feeds` (no binding: for parity checks and predictions, not timing)."""
        return self._session.run(None, feeds)

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        """Bind the inputs once and run one checked inference."""
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for output in self._session.get_outputs():
            binding.bind_output(output.name)
        self._binding, self._feeds = binding, feeds
        try:
            self.infer()
        except Exception as err:
            raise BadInput(f"{self.config.model}: inference fails with inputs "
                           f"{_describe(feeds)}: {runtime_error_summary(err)}") from None

    def infer(self) -> None:
        self._session.run_with_iobinding(self._binding)

    def runtime_settings(self) -> dict[str, str]:
        """Threads and providers as the session runs them (0 threads: ONNX Runtime's default, one per core)."""
        return {"intra_op_num_threads": str(self.config.threads or 0),
                "providers": ",".join(self._session.get_providers())}

    def compute_ops(self) -> list[ComputeOp]:
        """Compute ops of the graph after ONNX Runtime's optimizations (fusion to QLinearConv etc.)."""
        import onnx

        if self._tmp is None:
            raise RuntimeError("compute_ops needs an instrumented session")
        graph = onnx.load(str(Path(self._tmp.name) / "optimized.onnx"), load_external_data=False).graph
        float_inits = {t.name: ONNX_FLOAT_TYPES.get(t.data_type, "fp32") for t in graph.initializer}
        ops = []
        for node in graph.node:
            if node.op_type in ORT_INT8_OPS:
                ops.append(ComputeOp(node.name, node.op_type, "int8"))
            elif node.op_type in ORT_FLOAT_OPS:
                weight = node.input[1] if len(node.input) > 1 else ""
                ops.append(ComputeOp(node.name, node.op_type, float_inits.get(weight, "fp32")))
        return ops

    def profile_layers(self, runs: int) -> list[LayerTime]:
        """Run `runs` inferences after a warm-up and average ONNX Runtime's per-node kernel times."""
        if self._tmp is None:
            raise RuntimeError("profile_layers needs an instrumented session")
        for _ in range(PROFILE_WARMUP + runs):
            self.infer()
        self._profiling = False
        events = json.loads(Path(self._session.end_profiling()).read_text())
        # The profile covers every run since the session opened; keep only the last `runs`.
        model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                            if e.get("cat") == "Session" and e.get("name") == "model_run")
        measured = model_runs[-runs:]
        start = measured[0][0] if measured else 0
        totals: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("cat") != "Node" or not name.endswith("_kernel_time") or event.get("ts", 0) < start:
                continue
            node = name[: -len("_kernel_time")]
            totals[node] += float(event.get("dur", 0)) / 1e3
            args = event.get("args", {})
            kinds[node] = (args.get("op_name", "?"), args.get("provider", ""))
        count = max(1, len(measured))
        return [LayerTime(node, kinds[node][0], kinds[node][1], total / count) for node, total in totals.items()]

    def close(self) -> None:
        """Finish an open profile before its directory goes away."""
        if self._session is not None and self._profiling:
            self._session.end_profiling()
            self._profiling = False
        if self._tmp is not None:
            self._tmp.cleanup()


class OvSession:
    def __init__(self, config: SessionConfig, *, instrumented: bool = False):
        self.config = config
        core = openvino_core()
        try:
            model = core.read_model(config.model)
            if config.static_shapes is not None:
                model.reshape({name: list(shape) for name, shape in config.static_shapes.items()})
            self._compiled = core.compile_model(
                model, config.device, openvino_config(config.device, threads=config.threads, perf_count=instrumented))
        except Exception as err:  # OpenVINO raises RuntimeError and its own types (e.g. on NaN constants)
            raise BadInput(f"{config.model}: OpenVINO cannot load the model on {config.device}: "
                           f"{runtime_error_summary(err)}") from None
        self._request = self._compiled.create_infer_request()
        self._feeds: dict[str, np.ndarray] = {}

    def input_names(self) -> list[str]:
        return [port.get_any_name() for port in self._compiled.inputs]

    def fixed_batch(self) -> Optional[int]:
        first = self._compiled.inputs[0].get_partial_shape()[0]
        return first.get_length() if first.is_static else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output for `feeds` (no binding: for parity checks and predictions, not timing)."""
        return [np.asarray(value) for value in self._compiled(feeds).values()]

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        """Share the input arrays with the request once (no per-call copy) and run one checked inference."""
        import openvino as ov

        try:
            for name, array in feeds.items():
                self._request.set_tensor(name, ov.Tensor(array, shared_memory=True))
            self._feeds = feeds  # the tensors borrow these buffers
            self.infer()
        except RuntimeError as err:
            raise BadInput(f"{self.config.model}: inference fails with inputs "
                           f"{_describe(feeds)}: {runtime_error_summary(err)}") from None

    def infer(self) -> None:
        self._request.infer()

    def runtime_settings(self) -> dict[str, str]:
        """The compiled model's effective hint, streams, threads and precision (what benchmark_app prints)."""
        settings = {}
        for key in ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT"):
            try:
                value = self._compiled.get_property(key)
            except RuntimeError:
                continue  # not every device plugin reports every property
            settings[key] = value.to_string() if hasattr(value, "to_string") else str(value)  # ov.Type -> "f32"
        return settings

    def compute_ops(self) -> list[ComputeOp]:
        """Compute layers of the compiled (runtime) graph with the precision each really runs in."""
        ops = []
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            if layer not in OV_COMPUTE_LAYERS:
                continue
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            ops.append(ComputeOp(op.get_friendly_name(), layer, OV_PRECISIONS.get(precision.lower(), precision)))
        return ops

    def profile_layers(self, runs: int) -> list[LayerTime]:
        """Run `runs` inferences after a warm-up and average OpenVINO's performance counters per executed node."""
        for _ in range(PROFILE_WARMUP):
            self.infer()
        totals: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(runs):
            self.infer()
            for info in self._request.profiling_info:
                if info.status.name != "EXECUTED":
                    continue
                totals[info.node_name] += info.real_time.total_seconds() * 1e3
                kinds[info.node_name] = (info.node_type, info.exec_type)
        count = max(1, runs)
        return [LayerTime(node, kinds[node][0], kinds[node][1], total / count) for node, total in totals.items()]

    def close(self) -> None:
        """OpenVINO frees the compiled model with the object; nothing is held on disk."""


def _describe(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name}{list(a.shape)}:{a.dtype}" for name, a in feeds.items())
