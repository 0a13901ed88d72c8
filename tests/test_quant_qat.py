"""QAT + KD through edgekd.distill, the quantize() entry point and latency-aware layer choices."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.data import load_data
from edgekd.distill import DistillConfig, distill, evaluate
from edgekd.errors import BadInput
from edgekd.quant import LayerChoice, QuantConfig, QuantReport, qat, qat_distill_config, quantize_ptq
from edgekd.quant.qat import calibration_batches
from edgekd.quant.prepare import freeze, quant_layers
from edgekd.targets import load_target
from edgekd.tune import choose_layers_for_target, quantize  # edgekd.quantize: the stage with target-aware choices

X86 = load_target("x86-cpu-onnxruntime")


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    config = DistillConfig(epochs=6, kd=False, patience=None, cache=False)
    result = distill(student=small_cnn(), data=digits, config=config, progress=False)
    return result.model.eval()


def _accuracy(model, data) -> float:
    return evaluate(model, data.x_test, data.y_test)["accuracy"]


def test_qat_distills_from_the_float_model_and_freezes(digits, teacher, tmp_path):
    before = copy.deepcopy(teacher.state_dict())
    config = qat_distill_config(epochs=2, batch_size=128, cache=False)
    quantized, history = qat(model=teacher, data=digits, scheme=X86.quantization, config=config, warmup_epochs=1,
                             out_dir=tmp_path, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    for name, state in before.items():  # the teacher (the float model) is not modified, and still trainable
        assert torch.equal(state, teacher.state_dict()[name])
    assert all(p.requires_grad for p in teacher.parameters())
    layers = quant_layers(quantized)
    assert len(layers) == 3
    assert all(layer.input_quantizer.frozen and layer.weight_quantizer.frozen for layer in layers.values())
    assert quantized[0].bn_frozen and not quantized.training
    fp32, int8 = _accuracy(teacher, digits), _accuracy(quantized, digits)
    assert int8 >= fp32 - 0.05, (fp32, int8)
    report = QuantReport.of(quantized).as_dict()
    assert report["quantized"][0]["bn"] == "1" and report["kept_calibrated_start"] in (True, False)
    # A finished run resumes to the same weights without training again.
    again, history_again = qat(model=teacher, data=digits, scheme=X86.quantization, config=config, warmup_epochs=1,
                               out_dir=tmp_path, resume=True, progress=False)
    x = torch.from_numpy(digits.x_test[:16])
    with torch.no_grad():
        assert torch.equal(again(x), quantized(x))
    assert len(history_again) == 2


def test_qat_that_cannot_beat_its_calibrated_start_returns_it_and_says_so(digits, teacher):
    """A learning rate that wrecks the weights: no QAT epoch beats the calibrated start on validation,
    so qat() hands back that start, which is the PTQ model, and the report must not call it QAT-trained."""
    config = qat_distill_config(epochs=1, lr=1.0, batch_size=128, cache=False)
    quantized, history = qat(model=teacher, data=digits, scheme=X86.quantization, config=config, warmup_epochs=0,
                             progress=False)
    assert history[0]["val"]["accuracy"] < 0.5  # the trained epoch lost
    report = QuantReport.of(quantized)
    assert report.kept_calibrated_start is True and report.as_dict()["kept_calibrated_start"] is True
    assert "kept its calibrated start" in report.summary()
    start = quantize_ptq(model=teacher, scheme=X86.quantization, calibration=calibration_batches(
        digits.x_train, collate=None, samples=512, batch_size=config.batch_size, seed=config.seed))
    freeze(start)  # as qat() leaves what it returns
    expected = start.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in quantized.state_dict().items())
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        assert torch.equal(quantized(x), start(x))


def test_quantize_ptq_mode_reports_and_validates(digits, teacher):
    result = quantize(model=teacher, data=digits, config=QuantConfig.for_target(X86, mode="ptq", latency_aware=False))
    assert result.history == [] and result.layer_choice is None and result.report.kept_calibrated_start is None
    assert result.report.weight_bits in (7, 8) and len(result.report.quantized) == 3
    assert _accuracy(result.model, digits) >= _accuracy(teacher, digits) - 0.05
    with pytest.raises(BadInput, match="mode"):
        quantize(model=teacher, data=digits, config=QuantConfig(mode="dynamic"))
    with pytest.raises(BadInput, match="example_inputs"):
        quantize(model=teacher, data=digits, target=X86, config=QuantConfig.for_target(X86, mode="ptq"))


def test_a_measured_layer_choice_is_applied_and_explained(digits, teacher):
    slower_gemm = LayerChoice(
        target="x86-cpu-onnxruntime", runtime="onnxruntime", measured=True, reason=None,
        decisions=[{"kind": "small_gemm", "layers": ["8"], "macs": 160, "measured": True, "model_ms_kind_int8": 1.0,
                    "model_ms_kind_float": 0.8, "quantize": False}],
        whole_model={"fp32_ms": 2.0, "all_int8_ms": 1.0, "int8_ms": 0.8, "all_float": False}, float_layers=("8",))
    config = QuantConfig.for_target(X86, mode="ptq")
    result = quantize(model=teacher, data=digits, config=config, layer_choice=slower_gemm)
    assert [q["name"] for q in result.report.quantized] == ["0", "3"]
    assert result.report.float_layers[0]["name"] == "8" and "0.800 ms with small_gemm layers float" in \
        result.report.float_layers[0]["reason"]
    assert result.report.weight_bits_reason == config.weight_bits_reason and result.report.latency["measured"]
    slower_model = LayerChoice(target="x86-cpu-onnxruntime", runtime="onnxruntime", measured=True,
                               reason="whole model INT8 2.1 ms vs FP32 2.0 ms", float_layers=("0", "3", "8"),
                               whole_model={"fp32_ms": 2.0, "all_int8_ms": 2.1, "int8_ms": 2.1, "all_float": True})
    kept = quantize(model=teacher, data=digits, config=config, layer_choice=slower_model)
    assert kept.report.quantized == [] and "INT8 model not faster" in kept.report.float_layers[0]["reason"]
    x = torch.from_numpy(digits.x_test[:8])
    with torch.no_grad():
        assert torch.equal(kept.model(x), teacher(x))


def test_unmeasurable_targets_are_not_timed():
    model = small_cnn().eval()
    x = torch.rand(1, 1, 8, 8)
    qnn = choose_layers_for_target(model=model, target=load_target("qualcomm-npu-qnn"), example_inputs=x)
    assert not qnn.measured and qnn.reason.startswith("not measured") and qnn.float_layers == ()
    gpu = choose_layers_for_target(model=model, target=load_target("nvidia-gpu-onnxruntime-cuda"), example_inputs=x)
    assert "fp16" in gpu.reason and set(gpu.float_layers) == {"0", "3", "8"}


@pytest.mark.slow
def test_latency_choice_times_each_kind_in_the_whole_model():
    model = small_cnn().eval()
    choice = choose_layers_for_target(model=model, target=X86, example_inputs=torch.rand(1, 1, 16, 16), rounds=2,
                                      time_budget_s=0.05)
    assert choice.measured and choice.runtime == "onnxruntime"
    assert [d["kind"] for d in choice.decisions] == ["small_gemm", "conv"]  # smallest compute first
    gemm, conv = choice.decisions
    assert gemm["layers"] == ["8"] and gemm["measured"] and gemm["model_ms_kind_float"] > 0
    # float only when the rounds say it is clearly faster (edgekd.bench.clearly_faster: bands apart, > 5% lower)
    assert gemm["quantize"] == (not (gemm["spread_ms"]["kind_float"][1] < gemm["spread_ms"]["kind_int8"][0]
                                     and gemm["model_ms_kind_float"] < 0.95 * gemm["model_ms_kind_int8"]))
    assert conv["layers"] == ["0", "3"] and not conv["measured"]  # settled by the FP32 comparison
    whole = choice.whole_model
    assert whole["fp32_ms"] > 0 and whole["all_float"] == (whole["fp32_spread_ms"][1] < whole["int8_spread_ms"][0]
                                                           and whole["fp32_ms"] < 0.95 * whole["int8_ms"])
    expected = {"0", "3", "8"} if whole["all_float"] else ({"8"} if not gemm["quantize"] else set())
    assert set(choice.float_layers) == expected
