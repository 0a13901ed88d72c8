"""Fake quantization without export: grid arithmetic, gradients, BN folding, placement, checkpoints."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.errors import BadInput
from edgekd.models import ModelRef, resnet
from edgekd.quant import (
    FakeQuantizer,
    MatMul,
    QATSchedule,
    QuantConv2d,
    QuantReport,
    calibrate,
    checkpoint_transform,
    prepare,
    quantize_ptq,
)
from edgekd.quant.modules import QUANT_CONV
from edgekd.quant.observers import RangeObserver
from edgekd.quant.ops import fake_quantize
from edgekd.quant.qparams import grid, qparams_from_range
from edgekd.targets import load_target

X86 = load_target("x86-cpu-onnxruntime").quantization
QNN = load_target("qualcomm-npu-qnn").quantization


def _trained_bn_stats(model: nn.Module, shape=(8, 1, 16, 16), steps=3) -> nn.Module:
    """Give batch norms non-trivial running statistics, then switch to eval."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape) * 2 + 0.5)
    return model.eval()


def test_asymmetric_uint8_scale_and_zero_point_by_hand():
    scale, zero = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), grid(dtype="uint8", symmetric=False))
    assert scale.item() == pytest.approx(4 / 255)
    assert zero.dtype == torch.uint8 and zero.item() == 64  # round(1 / (4/255)) = round(63.75)


def test_symmetric_int8_is_narrow_and_zero_centred():
    g = grid(dtype="int8", symmetric=True)
    assert (g.qmin, g.qmax) == (-127, 127)
    scale, zero = qparams_from_range(torch.tensor(-0.5), torch.tensor(2.54), g)
    assert scale.item() == pytest.approx(0.02) and zero.item() == 0
    seven = grid(dtype="int8", symmetric=True, bits=7)
    assert (seven.qmin, seven.qmax) == (-63, 63)


def test_range_always_contains_zero():
    scale, zero = qparams_from_range(torch.tensor(0.5), torch.tensor(2.0), grid(dtype="uint8", symmetric=False))
    assert zero.item() == 0 and scale.item() == pytest.approx(2.0 / 255)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 7.5, True])
def test_impossible_bits_are_bad_input(bits):
    with pytest.raises(BadInput, match="bits"):
        grid(dtype="int8", symmetric=True, bits=bits)
    with pytest.raises(BadInput, match="bits"):
        prepare(model=nn.Sequential(nn.Linear(4, 4)), scheme=X86, weight_bits=bits)


def test_fake_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([-1.0, 0.05, 0.15, 0.26, 9.0])
    out = fake_quantize(x, torch.tensor(0.1), torch.tensor(0, dtype=torch.uint8), 0, 255, 1)
    # -1 clamps to 0; 0.5 and 1.5 steps round to even (0 and 2); 9.0 is inside 25.5.
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.2, 0.3, 9.0])
    top = fake_quantize(torch.tensor([100.0]), torch.tensor(0.1), torch.tensor(0, dtype=torch.uint8), 0, 255, 1)
    assert top.item() == pytest.approx(25.5)


def test_per_channel_weight_ranges_follow_each_channel():
    q = FakeQuantizer(grid=grid(dtype="int8", symmetric=True), axis=0, channels=3)
    weight = torch.tensor([[0.1, -0.2], [5.0, 1.0], [-0.01, 0.005]])
    q.set_range_from(weight)
    assert q.scale.tolist() == pytest.approx([0.2 / 127, 5.0 / 127, 0.01 / 127])
    out = q(weight)
    # Each channel's largest magnitude is exactly representable.
    assert out[0, 1].item() == pytest.approx(-0.2) and out[1, 0].item() == pytest.approx(5.0)
    assert out[2, 0].item() == pytest.approx(-0.01)


def test_straight_through_gradient_is_clipped_to_the_grid():
    x = torch.tensor([-5.0, 0.3, 1.0, 30.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0, dtype=torch.int8), -127, 127, 1)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # -5.0 -> -50 and 1.0 -> 10 are inside [-127, 127]; 30.0 -> 300 is clamped.
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 0.0]


def test_lsq_scale_gradient_by_hand():
    scale = torch.tensor(0.1, requires_grad=True)
    x = torch.tensor([0.26, 20.0])
    y = fake_quantize(x, scale, torch.tensor(0, dtype=torch.int8), -127, 127, 1)
    y.sum().backward()
    # inside: round(2.6) - 2.6 = 0.4; clamped above: qmax - z = 127; LSQ scale 1/sqrt(N * qmax).
    assert scale.grad.item() == pytest.approx((0.4 + 127) / math.sqrt(2 * 127), rel=1e-5)


def test_lsq_scales_are_parameters_that_learn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    quantized = prepare(model=model, scheme=X86, lsq=True)
    x = torch.randn(32, 8)
    calibrate(model=quantized, inputs=[x])
    layer = quantized[0]
    params = dict(quantized.named_parameters())
    assert "0.input_quantizer.scale" in params and params["0.weight_quantizer.scale"].shape == (4,)
    before = layer.weight_quantizer.scale.detach().clone()
    quantized.train()
    loss = (quantized(x) - 1.5 * model(x).detach()).pow(2).mean()
    loss.backward()
    assert layer.input_quantizer.scale.grad.abs().item() > 0 and layer.weight_quantizer.scale.grad.abs().sum() > 0
    torch.optim.SGD(quantized.parameters(), lr=0.01).step()
    assert not torch.equal(before, layer.weight_quantizer.scale.detach())


def test_percentile_observer_ignores_an_outlier():
    data = torch.cat([torch.rand(20000), torch.tensor([1000.0])])
    ranges = {}
    for method in ("minmax", "percentile"):
        observer = RangeObserver(method, grid(dtype="uint8", symmetric=False))
        observer.update(data)
        ranges[method] = observer.range()
    assert ranges["minmax"] == (pytest.approx(0.0, abs=1e-3), 1000.0)
    assert ranges["percentile"][1] < 2.0


def test_mse_observer_clips_a_heavy_tail_with_less_error_than_minmax():
    g = grid(dtype="int8", symmetric=False)
    data = \
        torch.from_numpy(np.random.default_rng(0).laplace(size=30000).astype(np.float32))
    errors, ranges = {}, {}
    for method in ("minmax", "mse"):
        observer = RangeObserver(method, g)
        observer.update(data)
        ranges[method] = observer.range()
        scale, zero = qparams_from_range(torch.tensor(ranges[method][0]), torch.tensor(ranges[method][1]), g)
        errors[method] = ((fake_quantize(data, scale, zero, g.qmin, g.qmax, 0) - data) ** 2).mean().item()
    assert ranges["mse"][1] < ranges["minmax"][1] and errors["mse"] < errors["minmax"]


@pytest.mark.parametrize("conv, bn, shape, conv_fn", [
    (nn.Conv2d, nn.BatchNorm2d, (8, 4, 16, 16), nn.functional.conv2d),
    (nn.Conv1d, nn.BatchNorm1d, (8, 4, 30), nn.functional.conv1d),
])
def test_bn_folding_matches_conv_then_bn(conv, bn, shape, conv_fn):
    model = _trained_bn_stats(nn.Sequential(conv(4, 6, 3, padding=1, groups=2), bn(6), nn.ReLU()), shape=shape)
    quantized = prepare(model=model, scheme=X86, weight_bits=8)
    assert isinstance(quantized[0], QUANT_CONV[conv]) and isinstance(quantized[1], nn.Identity)
    assert QuantReport.of(quantized).quantized[0]["kind"] == "grouped_conv"
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.allclose(quantized(x), model(x), atol=1e-5)  # quantizers are off until calibrated
        weight, bias = quantized[0].folded_weight_and_bias()
        folded = conv_fn(x, weight, bias, padding=1, groups=2)
        assert torch.allclose(folded, model[1](model[0](x)), atol=1e-5)
    calibrate(model=quantized, inputs=[x])
    assert quantized[0].weight_quantizer.scale.shape == (6,)
    with torch.no_grad():
        assert nn.functional.cosine_similarity(quantized(x).flatten(), model(x).flatten(), dim=0) > 0.999


def test_without_bn_folding_the_bn_stays_float_after_an_output_quantizer():
    model = _trained_bn_stats(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    quantized = prepare(model=model, scheme=X86, fold_bn=False)
    assert isinstance(quantized[1], nn.BatchNorm2d) and quantized[0].bn is None
    assert quantized[0].output_quantizer is not None and quantized[0].activation is None


def test_learning_bn_path_matches_conv_then_training_bn():
    model = _trained_bn_stats(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    quantized = prepare(model=model, scheme=X86, weight_bits=8).train()
    reference = _trained_bn_stats(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    reference.load_state_dict(model.state_dict())
    reference.train()
    x = torch.randn(8, 1, 10, 10)
    assert torch.allclose(quantized(x), reference(x), atol=1e-4)
    # Both updated their running statistics the same way.
    assert torch.allclose(quantized[0].bn.running_mean, reference[1].running_mean, atol=1e-5)


def test_ptq_output_is_close_to_float_and_names_survive():
    model = _trained_bn_stats(resnet(width=8, in_channels=1), shape=(8, 1, 16, 16))
    x = torch.rand(32, 1, 16, 16)
    quantized = quantize_ptq(model=model, scheme=X86, calibration=x.numpy())
    names = dict(quantized.named_modules())
    assert isinstance(names["layer1.0.conv1"], QuantConv2d) and isinstance(names["layer1.0.bn1"], nn.Identity)
    with torch.no_grad():
        ref, out = model(x), quantized(x)
    cosine = nn.functional.cosine_similarity(ref, out, dim=1).mean().item()
    assert cosine > 0.99
    captured = {}
    names["layer2.0.conv1"].register_forward_hook(lambda m, a, o: captured.setdefault("feat", o))
    quantized(x[:2])
    assert captured["feat"].shape == (2, 16, 8, 8)


def test_placement_shares_quantizers_and_adds_outputs_where_needed():
    model = _trained_bn_stats(resnet(width=8), shape=(8, 1, 16, 16))
    quantized = prepare(model=model, scheme=X86)
    block = quantized.layer2[0]
    # conv1 and the projection shortcut read the same tensor: one shared quantizer.
    assert block.shortcut[0].input_quantizer is block.conv1.input_quantizer
    # conv1 feeds only conv2 (through ReLU): no output quantizer; conv2 feeds the residual add: one.
    assert block.conv1.output_quantizer is None and block.conv2.output_quantizer is not None
    # The stem's ReLU output feeds layer1's conv1 and its identity shortcut: the stem quantizes it,
    # after the ReLU, and layer1's conv1 reuses that quantizer.
    assert quantized.stem[0].activation == "relu"
    assert quantized.layer1[0].conv1.input_quantizer is quantized.stem[0].output_quantizer
    report = QuantReport.of(quantized)
    assert report.graph == "torch.fx graph" and sum(1 for q in report.quantized if q["bn"]) == 9


def test_qnn_scheme_gives_per_tensor_uint8_asymmetric_weights():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    quantized = quantize_ptq(model=model, scheme=QNN, calibration=np.random.rand(16, 1, 8, 8).astype(np.float32))
    for layer in (quantized[0], quantized[3]):
        wq = layer.weight_quantizer
        assert wq.axis is None and wq.scale.dim() == 0
        assert wq.zero_point.dtype == torch.uint8 and (wq.grid.qmin, wq.grid.qmax) == (0, 255)
        assert layer.input_quantizer.zero_point.dtype == torch.uint8


def test_untraceable_model_falls_back_to_module_order():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            h = self.features(x).mean((2, 3))
            return self.head(h) if h.sum() > 0 else -self.head(h)  # data-dependent: fx cannot trace it

    model = _trained_bn_stats(Branchy(), shape=(8, 1, 8, 8))
    quantized = quantize_ptq(model=model, scheme=X86, calibration=np.random.rand(16, 1, 8, 8).astype(np.float32))
    report = QuantReport.of(quantized)
    assert report.graph.startswith("module order (torch.fx could not trace")
    assert [(q["name"], q["bn"], q["output_quantizer"]) for q in report.quantized] == [
        ("features.0", "features.1", False), ("head", None, False)]
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert nn.functional.cosine_similarity(quantized(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_unsupported_layers_stay_float_and_are_named():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(1, 2, 2, stride=2)
            self.conv = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.conv(self.up(x))

    quantized = prepare(model=Mixed(), scheme=X86)
    report = QuantReport.of(quantized)
    assert [q["name"] for q in report.quantized] == ["conv"]
    assert report.float_layers[0]["name"] == "up" and "ConvTranspose2d" in report.float_layers[0]["reason"]
    with pytest.raises(BadInput, match="ConvTranspose2d"):
        prepare(model=nn.Sequential(nn.ConvTranspose2d(1, 1, 2)), scheme=X86)


def test_bad_inputs_are_named():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(BadInput, match="nope"):
        prepare(model=model, scheme=X86, skip=("nope",))
    with pytest.raises(BadInput, match="QuantScheme"):
        prepare(model=model, scheme="int8")
    with pytest.raises(BadInput, match="observer"):
        prepare(model=model, scheme=X86, observer="histogram")
    quantized = prepare(model=model, scheme=X86)
    with pytest.raises(BadInput, match="already fake-quantized"):
        prepare(model=quantized, scheme=X86)
    with pytest.raises(BadInput, match="empty"):
        calibrate(model=quantized, inputs=[])
    with pytest.raises(BadInput, match=r"calibration batch 0 \(inputs \(2, 5\)\)"):
        calibrate(model=quantized, inputs=[torch.rand(2, 5)])
    assert not quantized[0].input_quantizer.enabled  # a failed calibration leaves the model as it was


def test_matmul_module_quantizes_both_operands():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
            self.scores = MatMul()

        def forward(self, x):
            return self.scores(self.q(x), self.k(x).transpose(-1, -2))

    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(4, 5, 8)
    quantized = quantize_ptq(model=model, scheme=X86, calibration=x.numpy())
    scores = quantized.scores
    assert scores.input_quantizer.enabled and scores.other_quantizer.enabled
    assert scores.input_quantizer is not scores.other_quantizer
    with torch.no_grad():
        ref, out = model(x), quantized(x)
        q, k = quantized.q(x), quantized.k(x).transpose(-1, -2)
        by_hand = torch.matmul(scores.input_quantizer(q), scores.other_quantizer(k))
    assert torch.equal(out, by_hand) and not torch.equal(out, ref)
    assert nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


def test_qat_schedule_freezes_after_warmup():
    model = _trained_bn_stats(resnet(width=8), shape=(8, 1, 16, 16))
    quantized = quantize_ptq(model=model, scheme=X86, calibration=np.random.rand(8, 1, 16, 16).astype(np.float32))
    schedule = QATSchedule(warmup_epochs=1)
    schedule.on_epoch_start(0, quantized)
    conv = quantized.layer1[0].conv2
    assert conv.input_quantizer.observing == "ema" and not conv.bn_frozen
    before = conv.input_quantizer.scale.clone()
    quantized.train()(torch.rand(8, 1, 16, 16) * 3)
    assert not torch.equal(before, conv.input_quantizer.scale)  # the range followed the batch
    schedule.on_epoch_start(1, quantized)
    quantized.train()
    assert conv.bn_frozen and not conv.bn.training and conv.input_quantizer.frozen
    frozen_scale = conv.input_quantizer.scale.clone()
    stats = conv.bn.running_mean.clone()
    quantized(torch.rand(8, 1, 16, 16) * 5)
    assert torch.equal(frozen_scale, conv.input_quantizer.scale) and torch.equal(stats, conv.bn.running_mean)


def test_checkpoint_round_trip_restores_the_fake_quant_model(tmp_path):
    model = _trained_bn_stats(resnet(width=8), shape=(8, 1, 16, 16))
    x = torch.rand(16, 1, 16, 16)
    quantized = quantize_ptq(model=model, scheme=X86, calibration=x.numpy())
    QATSchedule(warmup_epochs=0).on_epoch_start(0, quantized)  # frozen flags must survive too
    path = save_checkpoint(tmp_path / "q.pt", quantized, ref=ModelRef("edgekd.models:resnet", {"width": 8}),
                           transforms=[checkpoint_transform(quantized)])
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized.eval()(x))
    assert loaded.layer1[0].conv1.input_quantizer is loaded.stem[0].output_quantizer
    assert loaded.layer1[0].conv2.bn_frozen and loaded.layer1[0].conv2.input_quantizer.frozen
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")

