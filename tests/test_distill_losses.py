"""Distillation losses and feature taps, checked against values worked out by hand on tiny tensors."""

import math

import pytest
import torch
from torch import nn

from edgekd.distill import LOSSES, LossTerm
from edgekd.distill.hooks import FeatureTaps, blocks, proportional_index, proportional_map
from edgekd.distill.losses import build_loss
from edgekd.errors import BadInput
from edgekd.models import mobilenet, resnet


def softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_response_kd_matches_hand_computed_kl_times_t_squared():
    s, t, temp = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0
    p_s, p_t = softmax(s, temp), softmax(t, temp)
    expected = temp**2 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    loss = build_loss("response", {"temperature": temp})
    assert loss(torch.tensor([s]), torch.tensor([t]), None).item() == pytest.approx(expected, rel=1e-5)
    # batch mean: a second identical row leaves the value unchanged; a matching row halves it
    both = loss(torch.tensor([s, t]), torch.tensor([t, t]), None).item()
    assert both == pytest.approx(expected / 2, rel=1e-5)


def test_t_squared_keeps_soft_target_gradient_about_constant_across_temperatures():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10) * 3, torch.randn(16, 10) * 3

    def grad_norm(temp, scaled):
        x = s.clone().requires_grad_(True)
        value = build_loss("response", {"temperature": temp})(x, t, None)
        (value if scaled else value / temp**2).backward()
        return x.grad.norm().item()

    scaled = [grad_norm(temp, True) for temp in (2.0, 4.0, 8.0)]
    unscaled = [grad_norm(temp, False) for temp in (2.0, 4.0, 8.0)]
    assert max(scaled) / min(scaled) < 2.0  # T^2 version: same order of magnitude at every T
    assert unscaled[0] / unscaled[-1] > 10  # without T^2 it shrinks ~1/T^2: (8/2)^2 = 16 here


def test_ce_averages_over_labeled_samples_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, -1, 1])
    expected = (-math.log(softmax([2.0, 0.0])[0]) - math.log(softmax([5.0, -5.0])[1])) / 2
    assert build_loss("ce", {})(logits, None, labels).item() == pytest.approx(expected, rel=1e-5)


def test_ce_without_labeled_samples_is_zero_with_zero_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    value = build_loss("ce", {})(logits, None, torch.tensor([-1, -1, -1]))
    value.backward()
    assert value.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_fitnets_regresses_through_a_learned_1x1_conv():
    student = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)  # channels [0..3], [4..7]
    teacher = torch.ones(1, 3, 2, 2)
    loss = build_loss("fitnets", {})
    loss.materialize(student, teacher)
    conv = loss.projection.layer
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (2, 3, (1, 1))
    with torch.no_grad():  # projected channel c = 1 * student channel 0 (+ c as bias)
        conv.weight.zero_()
        conv.weight[:, 0] = 1.0
        conv.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    projected = [[v + bias for v in (0, 1, 2, 3)] for bias in (0, 1, 2)]
    expected = sum((v - 1) ** 2 for row in projected for v in row) / 12
    assert loss(student, teacher, None).item() == pytest.approx(expected)


def test_fitnets_resizes_the_projected_map_to_the_teacher_and_trains_the_projection():
    loss = build_loss("fitnets", {})
    student, teacher = torch.randn(2, 4, 4, 4, requires_grad=True), torch.randn(2, 8, 2, 2)
    value = loss(student, teacher, None)
    value.backward()
    assert loss.projection.layer.weight.grad is not None and student.grad is not None


def test_mse_and_cosine_on_embeddings():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert build_loss("mse", {})(s, t, None).item() == pytest.approx((1 + 1 + 1 + 1) / 4)
    assert build_loss("cosine", {})(s, t, None).item() == pytest.approx(1 - (0 + 1) / 2)
    widened = build_loss("cosine", {})
    widened.materialize(torch.zeros(2, 3), torch.zeros(2, 5))
    assert isinstance(widened.projection.layer, nn.Linear) and widened.projection.layer.out_features == 5


def test_spatial_attention_transfer_by_hand():
    # one channel each: attention map = f^2, normalised over the 4 positions
    s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    a_s, a_t = [1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 4
    loss = build_loss("attention", {})
    assert loss(s, t, None).item() == pytest.approx(expected)
    assert loss.kind == "spatial"


def test_attention_probability_kl_with_head_averaging_and_grouping():
    s_row, t_rows = [0.5, 0.5], ([0.9, 0.1], [0.7, 0.3])
    student = torch.tensor([s_row, s_row]).reshape(1, 1, 2, 2)  # 1 head, L=2 (both rows equal)
    teacher = torch.stack([torch.tensor([r, r]) for r in t_rows]).reshape(1, 2, 2, 2)  # 2 heads
    mean_t = [0.8, 0.2]
    expected = sum(p * math.log(p / q) for p, q in zip(mean_t, s_row))
    averaged = build_loss("attention", {})
    assert averaged(student, teacher, None).item() == pytest.approx(expected, rel=1e-5)
    assert averaged.kind == "probs"
    grouped = build_loss("attention", {"heads": "group"})  # 2 teacher heads -> 1 group, same average here
    assert grouped(student, teacher, None).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(BadInput, match="divisible"):
        build_loss("attention", {"heads": "group", "kind": "probs"})(teacher, student.expand(1, 3, 2, 2), None)


def test_rkd_distance_by_hand():
    # student: right triangle 3-4-5; teacher: the same shape scaled by 2 -> normalised distances equal
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert build_loss("rkd_distance", {})(s, 2 * s, None).item() == pytest.approx(0.0, abs=1e-6)
    # teacher with all three distances equal (equilateral, side 1): each normalised to 1
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    mean = (3 + 4 + 5) / 3
    diffs = [d / mean - 1 for d in (3, 4, 5)]
    huber = lambda x: 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5  # noqa: E731
    expected = 2 * sum(huber(d) for d in diffs) / 9  # symmetric matrix: each pair twice, zero diagonal
    assert build_loss("rkd_distance", {})(s, t, None).item() == pytest.approx(expected, rel=1e-5)
    collapsed = build_loss("rkd_distance", {})(torch.ones(3, 2), t, None)  # identical embeddings: finite, not 0/0
    assert math.isfinite(collapsed.item())


def test_rkd_angle_by_hand():
    # student: right angle at point 0; teacher: equilateral (all angles 60 degrees)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    angles_s = RKD_angle_cosines(s.tolist())
    angles_t = RKD_angle_cosines(t.tolist())
    huber = lambda x: 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5  # noqa: E731
    expected = sum(huber(a - b) for a, b in zip(angles_s, angles_t)) / 27
    assert build_loss("rkd_angle", {})(s, t, None).item() == pytest.approx(expected, rel=1e-5)


def RKD_angle_cosines(points):
    """cos of the angle at i between j and k for every (i, j, k), 0 where j or k is i."""
    out = []
    for i in points:
        for j in points:
            for k in points:
                u, v = [a - b for a, b in zip(j, i)], [a - b for a, b in zip(k, i)]
                nu, nv = math.hypot(*u), math.hypot(*v)
                out.append(0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv))
    return out


def test_registry_lists_the_losses_and_rejects_unknown_names_and_params():
    assert {"response", "ce", "fitnets", "attention", "rkd_distance", "rkd_angle", "cosine", "mse"} <= set(LOSSES)
    with pytest.raises(BadInput, match="close matches: fitnets"):
        build_loss("fitnet", {})
    with pytest.raises(BadInput, match="unknown params temp"):
        build_loss("response", {"temp": 2})
    assert LossTerm("fitnets").weight == 1.0


def test_taps_capture_module_outputs_by_name_and_tuple_elements():
    model = resnet(width=4, blocks=(1, 1, 1))
    x = torch.randn(2, 1, 8, 8)
    with FeatureTaps(model, ["layer2.0", "layer3.0.conv1"], role="student") as taps:
        model(x)
        assert taps.features["layer2.0"].shape == (2, 8, 4, 4)
        assert taps.features["layer3.0.conv1"].shape == (2, 16, 2, 2)
    assert not model.layer2[0]._forward_hooks  # hooks removed on exit

    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, x * 2

    holder = nn.Sequential(Pair())
    with FeatureTaps(holder, ["0#1"], role="teacher") as taps:
        holder(torch.ones(1, 2))
        assert taps.features["0#1"].tolist() == [[2.0, 2.0]]


def test_missing_layer_lists_close_matches():
    with pytest.raises(BadInput, match=r"student has no layer 'layer4\.0'.*close matches: .*layer1\.0"):
        FeatureTaps(resnet(width=4), ["layer4.0"], role="student")


def test_blocks_and_proportional_depth_map():
    assert blocks(resnet(width=4, blocks=(2, 1, 1))) == ["layer1.0", "layer1.1", "layer2.0", "layer3.0"]
    assert blocks(mobilenet(width=4)) == [f"blocks.{i}" for i in range(5)]
    assert [proportional_index(k, 3, 6) for k in (1, 2, 3)] == [2, 4, 6]
    assert [proportional_index(k, 2, 3) for k in (1, 2)] == [2, 3]  # 1.5 rounds half up
    assert [proportional_index(k, 4, 1) for k in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert proportional_map(["a", "b"], ["t1", "t2", "t3", "t4"]) == {"a": "t2", "b": "t4"}
