"""Export to ONNX QDQ and OpenVINO IR: parity, INT8 really executed, the gate, shapes and names."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import edgekd.export.exporter as exporter
from edgekd.errors import BadInput, GateFailed
from edgekd.export import export
from edgekd.models import mobilenet, resnet
from edgekd.quant import MatMul, QuantReport, calibrate, prepare, quantize_ptq
from edgekd.quant.qparams import grid
from edgekd.targets import load_target

X86 = load_target("x86-cpu-onnxruntime").quantization
QNN = load_target("qualcomm-npu-qnn").quantization


def _with_bn_stats(model: nn.Module, shape) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(*shape) * 2)
    return model.eval()


@pytest.fixture(scope="module")
def cnn():
    """A trained-statistics ResNet and its PTQ copy (BN folds, residual adds, a projection shortcut)."""
    model = _with_bn_stats(resnet(width=8), (16, 1, 16, 16))
    x = np.random.default_rng(0).random((96, 1, 16, 16), dtype=np.float32)
    return model, quantize_ptq(model=model, scheme=X86, calibration=x[:64]), x[64:]


@pytest.fixture(scope="module")
def ptq_export(cnn, tmp_path_factory):
    _, quantized, held_out = cnn
    out = tmp_path_factory.mktemp("ptq")
    return out, export(model=quantized, example_inputs=torch.from_numpy(held_out[:1]), out_dir=out,
                       parity_inputs=held_out)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_quantized_cnn_runs_int8_in_both_runtimes(ptq_export):
    _, result = ptq_export
    assert result.gate_passed and result.quantized
    assert result.int8_executed == {"onnx": True, "openvino": True}
    assert result.int8_kernels["onnx"]["kernels"] == {"QLinearConv": 9, "QGemm": 1}
    assert result.int8_kernels["onnx"]["coverage"] == 1.0 and result.int8_kernels["openvino"]["coverage"] == 1.0
    assert result.int8_kernels["openvino"]["kernels"] == {"Convolution": 9, "FullyConnected": 1}
    for runtime in ("onnx", "openvino"):
        assert result.parity[runtime]["top1_agreement"] >= 0.99 and result.parity[runtime]["cosine"] >= 0.999


def test_quantized_file_is_one_file_with_integer_weights(ptq_export, cnn):
    out, result = ptq_export
    # 7-bit weights on x86 hosts without VNNI (see edgekd.quant.qparams), else 8: [-63, 63] or [-127, 127]
    bits = QuantReport.of(cnn[1]).weight_bits
    weight_grid = grid(dtype=X86.weights.dtype, symmetric=X86.weights.symmetric, bits=bits)
    assert sorted(p.name for p in out.iterdir()) == ["model.export.json", "model.onnx", "openvino"]
    assert sorted(p.name for p in (out / "openvino").iterdir()) == ["model.bin", "model.xml"]
    graph = onnx.load(str(result.onnx))
    values = _initializers(graph)
    producers = {o: n for n in graph.graph.node for o in n.output}
    for node in (n for n in graph.graph.node if n.op_type == "Conv"):
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and values[weight_dq.input[0]].dtype == np.int8
        bias_dq = producers[node.input[2]]
        assert bias_dq.op_type == "DequantizeLinear" and values[bias_dq.input[0]].dtype == np.int32
        weights = values[weight_dq.input[0]]
        assert weight_grid.qmin <= weights.min() and weights.max() <= weight_grid.qmax
        assert np.abs(weights).max() == weight_grid.qmax  # min-max scales: the largest weight uses the whole grid
    evidence = json.loads((out / "model.export.json").read_text())
    assert evidence["gate"] == "passed" and evidence["parity_source"] == "held-out parity inputs"


def test_int8_mobilenet_file_is_smaller_than_fp32_and_stores_weights_once(tmp_path):
    """Depthwise, squeeze-excite and concat: every quantized weight is one int8 initializer behind its
    DequantizeLinear, and the exporter's per-node traces (which made this INT8 file twice the FP32
    one's size) are gone, with the build machine's paths they carried."""
    model = _with_bn_stats(mobilenet(width=8), (16, 1, 16, 16))
    x = np.random.default_rng(2).random((80, 1, 16, 16), dtype=np.float32)
    quantized = quantize_ptq(model=model, scheme=X86, calibration=x[:48])
    example = torch.from_numpy(x[48:49])
    fp32, int8 = (export(model=m, example_inputs=example, out_dir=tmp_path / name, parity_inputs=x[48:],
                         formats=("onnx",)) for name, m in (("fp32", model), ("int8", quantized)))
    assert int8.quantized and int8.gate_passed and int8.graph_rewrites["export_traces"] > 0
    assert int8.onnx.stat().st_size < 0.7 * fp32.onnx.stat().st_size
    graph = onnx.load(str(int8.onnx))
    values = _initializers(graph)
    producers = {o: n for n in graph.graph.node for o in n.output}
    weight_dqs = [producers[n.input[1]] for n in graph.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weight_dqs) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert all(dq.op_type == "DequantizeLinear" and values[dq.input[0]].dtype == np.int8 for dq in weight_dqs)
    float_values = [name for name, v in values.items() if v.dtype == np.float32 and v.ndim > 1]
    assert not float_values  # scales only: no float weight beside its int8 copy
    assert str(Path(exporter.__file__).parents[2]).encode() not in int8.onnx.read_bytes()


def test_dynamic_batch_by_default(ptq_export, cnn):
    _, result = ptq_export
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    out = session.run(None, {"input": cnn[2][:3]})[0]
    assert out.shape == (3, 10)


def test_float_model_exports_without_int8(cnn, tmp_path):
    model, _, held_out = cnn
    result = export(model=model, example_inputs=torch.from_numpy(held_out[:2]), out_dir=tmp_path,
                    parity_inputs=held_out, formats=("onnx",))
    assert not result.quantized and result.int8_executed == {"onnx": False}
    assert result.parity["onnx"]["cosine"] > 0.99999 and result.openvino_xml is None


def test_fp16_export_halves_the_weights_keeps_fp32_io_and_agrees(cnn, tmp_path):
    model, quantized, held_out = cnn
    fp32 = export(model=model, example_inputs=torch.from_numpy(held_out[:2]), out_dir=tmp_path / "fp32",
                  parity_inputs=held_out, formats=("onnx",))
    fp16 = export(model=model, example_inputs=torch.from_numpy(held_out[:2]), out_dir=tmp_path / "fp16",
                  parity_inputs=held_out, precision="fp16")
    assert fp16.gate_passed and fp16.precision == "fp16" and not fp16.quantized
    graph = onnx.load(str(fp16.onnx))
    weights = [i for i in graph.graph.initializer if len(i.dims) == 4]  # the conv kernels
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    io_types = {v.type.tensor_type.elem_type for v in list(graph.graph.input) + list(graph.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}  # fed and read exactly like the FP32 model
    weight_bytes = [sum(a.nbytes for a in _initializers(onnx.load(str(r.onnx))).values()) for r in (fp32, fp16)]
    assert weight_bytes[1] < 0.55 * weight_bytes[0]
    ov_weights = fp16.openvino_xml.with_suffix(".bin").stat().st_size
    assert ov_weights < 0.55 * sum(p.numel() * 4 for p in model.parameters())  # IR weights stored as FP16 too
    for runtime in ("onnx", "openvino"):
        assert fp16.parity[runtime]["top1_agreement"] >= 0.99 and fp16.parity[runtime]["non_finite"] == 0
        assert 0 < fp16.parity[runtime]["max_abs_diff"] < 0.05  # FP16 rounding: small, not zero
    assert json.loads(fp16.report.read_text())["precision"] == "fp16"
    with pytest.raises(BadInput, match="fake-quantized"):
        export(model=quantized, example_inputs=torch.from_numpy(held_out[:1]), out_dir=tmp_path / "q", precision="fp16")
    with pytest.raises(BadInput, match="precision"):
        export(model=model, example_inputs=torch.from_numpy(held_out[:1]), out_dir=tmp_path / "q", precision="int4")


def test_fp16_overflow_fails_the_gate(tmp_path):
    """Activations past FP16's 65504 become inf on a GPU running the FP16 model, though a CPU runtime
    (FP32 between casts) shows finite outputs: the gate must refuse it and name the layer."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e4)  # |hidden| ~ 1e4 * 8 * x > 65504
    x = np.random.default_rng(0).random((16, 8), dtype=np.float32) + 1
    with pytest.raises(GateFailed, match="layer '0' outputs values up to"):
        export(model=model, example_inputs=torch.from_numpy(x[:2]), out_dir=tmp_path, parity_inputs=x,
               formats=("onnx",), precision="fp16")
    assert not (tmp_path / "model.onnx").exists()


def test_gate_fails_on_a_corrupted_scale_and_leaves_nothing_valid(cnn, tmp_path, monkeypatch):
    _, quantized, held_out = cnn
    (tmp_path / "model.onnx").write_bytes(b"an older export that no longer matches")
    # ... with its gate evidence, so it is edgekd's own (a user's file of the same name is never deleted)
    (tmp_path / "model.export.json").write_text(json.dumps({"gate": "passed", "parity": {}, "int8_executed": {}}))
    real_clean = exporter.clean_qdq_graph

    def corrupt_after_clean(graph):
        counts = real_clean(graph)
        conv = next(n for n in graph.graph.node if n.op_type == "Conv")
        producers = {o: n for n in graph.graph.node for o in n.output}
        scale_name = producers[conv.input[1]].input[1]
        init = next(i for i in graph.graph.initializer if i.name == scale_name)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 8, scale_name))
        return counts

    monkeypatch.setattr(exporter, "clean_qdq_graph", corrupt_after_clean)
    with pytest.raises(GateFailed, match="cosine|top-1"):
        export(model=quantized, example_inputs=torch.from_numpy(held_out[:1]), out_dir=tmp_path,
               parity_inputs=held_out)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "openvino" / "model.xml").exists()
    rejected = tmp_path / "rejected" / "model"
    assert (rejected / "model.onnx").is_file()
    assert json.loads((rejected / "gate.json").read_text())["gate"] == "failed"
    assert not any(p.name.startswith(".model.export-") for p in tmp_path.iterdir())


def test_qnn_scheme_static_export_keeps_uint8_per_tensor_weights(tmp_path):
    torch.manual_seed(0)
    model = _with_bn_stats(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten()), (16, 1, 12, 12))
    x = np.random.default_rng(1).random((48, 1, 12, 12), dtype=np.float32)
    quantized = quantize_ptq(model=model, scheme=QNN, calibration=x[:32])
    # OpenVINO runs convs with asymmetric uint8 weights in f32 (measured): the gate refuses that IR.
    with pytest.raises(GateFailed, match="openvino: none of the 2 quantized layers"):
        export(model=quantized, example_inputs=torch.from_numpy(x[:1]), out_dir=tmp_path, parity_inputs=x[32:],
               static_shapes=True, task="embedding")
    result = export(model=quantized, example_inputs=torch.from_numpy(x[:1]), out_dir=tmp_path, parity_inputs=x[32:],
                    static_shapes=True, formats=("onnx",), task="embedding")
    assert result.int8_executed == {"onnx": True} and result.int8_kernels["onnx"]["kernels"]["QLinearConv"] == 2
    graph = onnx.load(str(result.onnx))
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 12, 12]
    values = _initializers(graph)
    producers = {o: n for n in graph.graph.node for o in n.output}
    for node in (n for n in graph.graph.node if n.op_type == "Conv"):
        weight_dq = producers[node.input[1]]
        scale, zero = values[weight_dq.input[1]], values[weight_dq.input[2]]
        assert values[weight_dq.input[0]].dtype == np.uint8 and zero.dtype == np.uint8
        assert scale.shape == () and zero.shape == ()
        activation_dq = producers[node.input[0]]
        assert values[activation_dq.input[2]].dtype == np.uint8


def test_learned_scales_export_as_constants(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    x = np.random.default_rng(2).random((40, 1, 8, 8), dtype=np.float32)
    quantized = prepare(model=model, scheme=X86, lsq=True)
    calibrate(model=quantized, inputs=[torch.from_numpy(x[:24])])
    result = export(model=quantized, example_inputs=torch.from_numpy(x[:1]), out_dir=tmp_path, parity_inputs=x[24:],
                    formats=("onnx",))
    assert result.int8_kernels["onnx"]["kernels"] == {"QLinearConv": 1, "QGemm": 1}
    graph = onnx.load(str(result.onnx))
    assert {n.op_type for n in graph.graph.node} <= {"QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "Flatten",
                                                     "Reshape", "Gemm"}


class TinyEncoder(nn.Module):
    """Two inputs (token ids, mask), Linear projections and MatMul modules for attention."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.scores, self.mix = MatMul(), MatMul()

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        scores = self.scores(self.q(h), self.k(h).transpose(1, 2)) / 4.0
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e4)
        h = h + self.out(self.mix(scores.softmax(-1), self.v(h)))
        mask = attention_mask[..., None].float()
        return (h * mask).sum(1) / mask.sum(1)


def test_two_input_encoder_with_dynamic_batch_and_sequence(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(1, 50, (40, 7))
    mask = torch.ones(40, 7, dtype=torch.int64)
    mask[::3, 5:] = 0
    quantized = quantize_ptq(model=TinyEncoder().eval(), scheme=X86, calibration=(ids[:24].numpy(), mask[:24].numpy()))
    dims = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    result = export(model=quantized, example_inputs=(ids[:1], mask[:1]), out_dir=tmp_path, task="embedding",
                    parity_inputs=(ids[24:].numpy(), mask[24:].numpy()), input_names=["input_ids", "attention_mask"],
                    output_names=["embedding"], dynamic_dims=dims)
    assert result.gate_passed and "top1_agreement" not in result.parity["onnx"]
    assert result.parity["onnx"]["cosine"] >= 0.999 and result.parity["openvino"]["cosine"] >= 0.999
    assert result.int8_kernels["onnx"]["coverage"] == 1.0  # projections and both attention matmuls
    assert result.int8_executed["openvino"]
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    out = session.run(["embedding"], {"input_ids": np.random.randint(1, 50, (3, 11)),
                                      "attention_mask": np.ones((3, 11), dtype=np.int64)})[0]
    assert out.shape == (3, 16)


def test_bad_export_arguments_are_named(cnn, tmp_path):
    model, _, held_out = cnn
    x = torch.from_numpy(held_out[:1])
    with pytest.raises(BadInput, match="tflite"):
        export(model=model, example_inputs=x, out_dir=tmp_path, formats=("tflite",))
    with pytest.raises(BadInput, match="'tokens'"):
        export(model=model, example_inputs=x, out_dir=tmp_path, dynamic_dims={"tokens": {0: "batch"}})
    with pytest.raises(BadInput, match="static_shapes"):
        export(model=model, example_inputs=x, out_dir=tmp_path, static_shapes=True, dynamic_dims={"input": {0: "b"}})
    with pytest.raises(BadInput, match="task"):
        export(model=model, example_inputs=x, out_dir=tmp_path, task="detection")
    with pytest.raises(BadInput, match=r"example_inputs \(shapes \(1, 3, 16, 16\)\)"):
        export(model=model, example_inputs=torch.rand(1, 3, 16, 16), out_dir=tmp_path)
    with pytest.raises(BadInput, match="parity_inputs"):
        export(model=model, example_inputs=x, out_dir=tmp_path, parity_inputs=np.zeros((4, 2, 16, 16), np.float32),
               formats=("onnx",))
    (tmp_path / "fake.pt").write_text("hello")
    with pytest.raises(BadInput, match="fake.pt"):
        export(model=tmp_path / "fake.pt", example_inputs=x, out_dir=tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_parity_refuses_inf_and_nan_outputs():
    from edgekd.export.gate import compare, parity_failures

    reference = [np.ones((4, 3), dtype=np.float32)]
    broken = reference[0].copy()
    broken[0, 0], broken[1, 1] = np.inf, np.nan
    parity = compare(reference, [broken], task="embedding")
    assert parity["non_finite"] == 2
    problems = parity_failures(parity, task="embedding")
    assert any("2 output values are inf or NaN" in p for p in problems)
    assert any("cosine" in p for p in problems)  # the NaN cosine fails too instead of slipping through
    assert parity_failures(compare(reference, reference, task="embedding"), task="embedding") == []
