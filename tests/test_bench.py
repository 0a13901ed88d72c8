"""edgekd.bench on real runtimes: tiny models built here, run on ONNX Runtime and OpenVINO."""

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from edgekd.bench import benchmark, measure_latency, render_bench
from edgekd.errors import BadInput
from edgekd.targets import parse_target

QUICK = dict(warmup=2, min_iterations=10, time_budget_s=0.0)
# MACs of the tiny net on a 1x1x8x8 input, by hand:
# conv1 8x8x8 outputs x (1x3x3) + conv2 16x4x4 outputs x (8x3x3) + fc 10 outputs x 16
TINY_MACS = 8 * 8 * 8 * 9 + 16 * 4 * 4 * 72 + 10 * 16


def _target(**overrides):
    """A profile that any host with the runtime can run (no CPU requirements)."""
    profile = {"name": "test-cpu", "device": "cpu", "runtime": "onnxruntime", "runtime_device": "CPUExecutionProvider",
               "precision": "fp32", "slo": {"latency_p95_ms": 1000.0, "peak_memory_mb": 4096, "model_size_mb": 1,
                       "min_metric_retention": 0.99}}
    profile.update(overrides)
    return parse_target(profile, source="test")


OV_CPU = dict(runtime="openvino", runtime_device="CPU")


def _tiny_conv_net(path: Path) -> Path:
    """conv(1->8) relu conv(8->16, stride 2) relu global-pool flatten fc(16->10), dynamic batch."""
    rng = np.random.default_rng(0)

    def weight(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    weights = [weight("w1", 8, 1, 3, 3), weight("b1", 8), weight("w2", 16, 8, 3, 3, scale=0.1), weight("b2", 16),
               weight("w3", 10, 16, scale=0.1), weight("b3", 10)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _quantize_qdq(fp32: Path, path: Path) -> Path:
    """INT8 QDQ: per-channel symmetric int8 weights, uint8 activations (the x86 profiles' scheme)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Samples(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self._batches = iter([{"x": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self._batches, None)

    quantize_static(str(fp32), str(path), Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def _tiny_text_model(path: Path) -> Path:
    """Embedding lookup (vocabulary 100) masked by attention_mask, mean-pooled: [batch, sequence] int64 inputs."""
    emb = numpy_helper.from_array(np.random.default_rng(2).normal(size=(100, 4)).astype(np.float32), "emb")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),  # fails on ids >= 100
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["masked"]),
        helper.make_node("ReduceMean", ["masked", "axis1"], ["y"], keepdims=0),
    ]
    axes = [numpy_helper.from_array(np.array([2], np.int64), "axis"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "text", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [emb, *axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import openvino as ov

    root = tmp_path_factory.mktemp("bench-models")
    fp32 = _tiny_conv_net(root / "tiny.onnx")
    int8 = _quantize_qdq(fp32, root / "tiny_int8.onnx")
    ov.save_model(ov.convert_model(str(fp32)), str(root / "tiny.xml"), compress_to_fp16=False)
    return {"fp32": fp32, "int8": int8, "ir": root / "tiny.xml", "text": _tiny_text_model(root / "text.onnx")}


def test_fp32_onnx_on_onnxruntime_measures_every_figure(models):
    result = benchmark(model=models["fp32"], target=_target(), **QUICK, measure_memory=True)
    assert result.available and result.reason is None
    lat = result.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["std"] >= 0 and result.iterations >= 10 and result.throughput_per_s > 0
    assert result.inputs == {"x": {"shape": [1, 1, 8, 8], "dtype": "float32"}}
    assert result.model_size_mb == pytest.approx(models["fp32"].stat().st_size / 2**20)
    # Memory is measured in child processes: the model's increment and the process peak.
    assert result.peak_memory_mb > 0
    assert result.memory.process_peak_mb > result.memory.baseline_mb > 0
    # Per-layer times from ONNX Runtime's profiler, slowest first, shares of the total.
    assert result.layers and result.layers[0]["time_ms"] >= result.layers[-1]["time_ms"]
    assert sum(layer["share"] for layer in result.layers) == pytest.approx(1.0)
    assert {"Conv", "Gemm"} <= {layer["op"] for layer in result.layers}
    assert result.precision.executed == "fp32" and result.precision.int8_executed is False
    assert not result.precision.mismatch
    assert result.slo.verdict == "pass"


def test_result_dict_is_the_report_targets_entry(models):
    result = benchmark(model=models["fp32"], target=_target(), **QUICK, measure_memory=False)
    entry = json.loads(json.dumps(result.to_dict()))
    assert list(entry)[:9] == ["name", "available", "reason", "estimated", "latency_ms", "throughput_per_s",
                               "peak_memory_mb", "model_size_mb", "slo"]
    assert entry["estimated"] is False
    assert {"p50", "p90", "p95", "p99", "mean", "std"} <= set(entry["latency_ms"])
    # Memory was not measured, so the memory limit cannot pass: the verdict says so.
    assert entry["peak_memory_mb"] is None
    assert entry["slo"]["verdict"] == "not-measured"
    assert {"key": "peak_memory_mb", "limit": 4096.0, "value": None, "ok": None} in entry["slo"]["checks"]
    assert entry["executed_precision"] == "fp32" and entry["int8_executed"] is False


def test_int8_qdq_model_is_detected_running_int8_on_onnxruntime(models):
    result = benchmark(model=models["int8"], target=_target(precision="int8"), **QUICK, measure_memory=False,
                       metric_retention=0.5)
    assert [c.key for c in result.slo.failed] == ["min_metric_retention"]  # the retention passed in is checked
    assert result.precision.expected == "int8"
    assert result.precision.executed == "int8" and result.precision.int8_executed is True
    assert not result.precision.mismatch
    assert "QLinearConv" in {layer["op"] for layer in result.layers}
    assert not any("INT8 expected" in w for w in result.warnings)


def test_fp32_model_on_an_int8_target_is_flagged(models):
    result = benchmark(model=models["fp32"], target=_target(precision="int8"), **QUICK, measure_memory=False,
                       profile_layers=False)
    assert result.precision.mismatch is True
    assert result.to_dict()["precision_mismatch"] is True
    assert any(w.startswith("INT8 expected") and "FP32" in w for w in result.warnings)


@pytest.mark.parametrize("model_key", ["fp32", "ir"])
def test_openvino_runs_onnx_and_ir_with_static_shapes_and_threads(models, model_key):
    target = _target(**OV_CPU, static_shapes=True, batch_size=2, threads=1)
    result = benchmark(model=models[model_key], target=target, **QUICK, measure_memory=False)
    assert result.available and result.latency_ms["p50"] > 0
    assert result.inputs["x"]["shape"] == [2, 1, 8, 8] and result.batch_size == 2
    assert result.runtime_settings["INFERENCE_NUM_THREADS"] == "1"
    assert result.runtime_settings["PERFORMANCE_HINT"] == "LATENCY"
    assert result.precision.executed == "fp32"
    assert "Convolution" in {layer["op"] for layer in result.layers}  # OpenVINO performance counters
    if model_key == "ir":
        assert result.model_size_mb == pytest.approx(
            (models["ir"].stat().st_size + models["ir"].with_suffix(".bin").stat().st_size) / 2**20)


def test_fp32_artifact_executes_f32_on_openvino_cpu_wherever_it_is_compiled(models):
    """OpenVINO's CPU plugin runs FP32 models in bf16 by default on AVX512_BF16/AMX hosts: the bench,
    the export gate and predict must all pin f32, and report.json must say so."""
    from edgekd.bench import predict
    from edgekd.runtimes import cpu_session

    entry = benchmark(model=models["ir"], target=_target(**OV_CPU), **QUICK, measure_memory=False,
                      profile_layers=False).to_dict()
    assert entry["executed_precision"] == "fp32" and set(entry["precision"]["compute_layers"]) == {"fp32"}
    assert entry["runtime_settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert cpu_session(models["ir"]).runtime_settings()["INFERENCE_PRECISION_HINT"] == "f32"  # the gate's session
    # predict hides its compiled model; bf16 is ~1e-3 off ONNX Runtime's FP32 outputs here, f32 ~1e-7.
    x = np.random.default_rng(4).random((8, 1, 8, 8), dtype=np.float32)
    reference = predict(model=models["fp32"], inputs=x)
    np.testing.assert_allclose(predict(model=models["ir"], inputs=x), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="OpenVINO's INT8 CPU kernels are x86")
def test_int8_qdq_model_runs_int8_on_openvino_cpu(models):
    result = benchmark(model=models["int8"], target=_target(**OV_CPU, precision="int8"), **QUICK,
                       measure_memory=False, profile_layers=False)
    assert result.precision.int8_executed is True
    assert result.precision.compute_layers.get("int8", 0) >= 2  # both convolutions


def test_openvino_memory_probe_returns_a_positive_figure(models):
    result = benchmark(model=models["ir"], target=_target(**OV_CPU), **QUICK, profile_layers=False)
    assert result.peak_memory_mb > 0
    assert result.memory.process_peak_mb >= result.memory.baseline_mb + result.peak_memory_mb - 1e-9


def test_text_model_gets_valid_ids_and_the_sequence_length_given(models):
    result = benchmark(model=models["text"], target=_target(), dynamic_dims={"sequence": 12}, **QUICK,
                       measure_memory=False, profile_layers=False)
    assert result.inputs == {"input_ids": {"shape": [1, 12], "dtype": "int64"},
                             "attention_mask": {"shape": [1, 12], "dtype": "int64"}}
    with pytest.raises(BadInput, match="sequence"):
        benchmark(model=models["text"], target=_target(), **QUICK)


def test_real_samples_are_benchmarked_in_the_profile_batch(models):
    samples = np.random.default_rng(3).random((5, 1, 8, 8))
    timing = measure_latency(model=models["fp32"], target=_target(batch_size=4), inputs=samples, **QUICK)
    assert timing["available"] is True and timing["batch_size"] == 4
    assert 0 < timing["p50"] <= timing["p95"]


def test_absent_device_is_not_measured_with_reason_and_a_labelled_estimate(models):
    target = _target(**{**OV_CPU, "runtime_device": "EDGEKD_ABSENT_DEVICE"}, precision="int8",
                     peak={"int8_tops": 2.0})
    result = benchmark(model=models["ir"], target=target, **QUICK)
    assert result.available is False and "EDGEKD_ABSENT_DEVICE" in result.reason
    assert result.slo.verdict == "not-measured" and "EDGEKD_ABSENT_DEVICE" in result.slo.reason
    entry = result.to_dict()
    assert entry["latency_ms"] == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert entry["estimated"] is True and entry["estimate"]["estimated"] is True
    assert entry["estimate"]["macs"] == TINY_MACS
    # Only a compute peak is given, so the bound is 2 x MACs / peak ops.
    assert entry["estimate"]["latency_ms"] == pytest.approx(2 * TINY_MACS / 2.0e12 * 1e3)
    assert measure_latency(model=models["ir"], target=target)["p50"] is None


def test_render_shows_figures_verdict_and_layers(models):
    result = benchmark(model=models["int8"], target=_target(precision="int8"), **QUICK, measure_memory=False)
    console = Console(record=True, width=200)
    render_bench(result, console)
    text = console.export_text()
    assert "latency p50 / p90 / p95 / p99" in text and "SLO verdict: not-measured" in text
    assert "QLinearConv" in text and "int8 (expected int8)" in text


def test_onnxruntime_target_rejects_openvino_ir(models):
    with pytest.raises(BadInput, match="tiny.xml.*cannot load OpenVINO IR"):
        benchmark(model=models["ir"], target=_target(), **QUICK)


def test_missing_corrupt_or_foreign_models_are_bad_input_naming_the_file(models, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(models["fp32"].read_bytes()[:1000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model at all")
    weights_only = tmp_path / "model.pt"
    weights_only.write_bytes(b"\x80\x04")
    lonely_xml = tmp_path / "lonely.xml"
    lonely_xml.write_text(models["ir"].read_text())  # no lonely.bin beside it
    broken_xml = tmp_path / "broken.xml"
    broken_xml.write_text(models["ir"].read_text()[:500])
    broken_xml.with_suffix(".bin").write_bytes(models["ir"].with_suffix(".bin").read_bytes())
    cases = {tmp_path / "missing.onnx": "no such model file", truncated: "not a valid ONNX model",
             garbage: "not a valid ONNX model", weights_only: "unsupported model format", lonely_xml: "lonely.bin",
             broken_xml: "OpenVINO cannot read"}
    for path, message in cases.items():
        target = _target(**OV_CPU) if path.suffix == ".xml" else _target()
        with pytest.raises(BadInput, match=message) as caught:
            benchmark(model=path, target=target, **QUICK)
        assert str(path) in str(caught.value)


def test_runtime_that_cannot_run_the_graph_is_bad_input(tmp_path):
    """A well-formed ONNX file whose op no runtime knows fails at load, naming the file."""
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="edgekd.test")
    graph = helper.make_graph([node], "unknown-op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "unknown_op.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("edgekd.test", 1)]), path)
    with pytest.raises(BadInput, match="unknown_op.onnx: ONNX Runtime cannot load the model"):
        benchmark(model=path, target=_target(), **QUICK)
