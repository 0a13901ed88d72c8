"""Structured pruning of CNNs: real smaller models, coupled shapes, rounding, schedule, errors."""

import copy

import pytest
import torch
from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.errors import BadInput
from edgekd.models import ModelRef
from edgekd.prune import calibration_loss, count_params_macs, prune
from edgekd.prune.planner import round_kept

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class GroupedNet(nn.Module):
    """A grouped (not depthwise) convolution between two plain ones."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.grouped(torch.relu(self.stem(x)))))
        return self.fc(self.head(x).mean((2, 3)))


def grouped_net() -> GroupedNet:
    torch.manual_seed(0)
    return GroupedNet()


class DetachNet(nn.Module):
    """Its forward leaves autograd between two convs, so no tracer can see they are linked."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        x = torch.from_numpy(self.a(x).detach().numpy())
        return self.fc(self.b(x).mean((2, 3)))


class HardCodedNet(nn.Module):
    """Its forward hard-codes a channel count, which pruning changes."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(128, 2)

    def forward(self, x):
        x = self.b(self.a(x))
        return self.fc(x.reshape(x.shape[0], 8, -1).mean(2).repeat(1, 16))


def _mobilenet(width=8):
    torch.manual_seed(0)
    return ModelRef("edgekd.models:mobilenet", {"width": width}).build().eval()


def _convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_resnet_pruned_by_half_is_a_smaller_model_with_halved_stages():
    torch.manual_seed(0)
    model = ModelRef("edgekd.models:resnet", {"width": 16}).build().eval()
    result = prune(model=model, example_inputs=X, ratio=0.5)
    pruned = result.model
    params, macs = count_params_macs(model=pruned, example_inputs=X)
    assert params == result.report["after"]["params"] < 0.35 * result.report["before"]["params"]
    assert macs == result.report["after"]["macs"] < result.report["before"]["macs"]
    assert pruned(X).shape == model(X).shape == (2, 10)
    # the stem and the classifier keep their outputs; every residual stage keeps half
    assert pruned.stem[0].out_channels == 16 and pruned.fc.out_features == 10
    assert [pruned.layer2[0].conv2.out_channels, pruned.layer2[0].shortcut[0].out_channels] == [16, 16]
    assert pruned.layer3[0].conv1.out_channels == 32 and pruned.fc.in_features == 32
    assert sorted(result.report["protected"]) == ["fc", "stem.0"]
    assert all(g["after"] * 2 == g["before"] for g in result.report["groups"])
    assert model.layer3[0].conv1.out_channels == 64  # the input model is untouched


def test_mobilenet_shapes_stay_consistent_through_residuals_concat_depthwise_and_se():
    model = _mobilenet()
    result = prune(model=model, example_inputs=X, ratio=0.6, global_pruning=True)
    pruned, convs = result.model, _convs(result.model)
    assert pruned(X).shape == (2, 10)
    for name, conv in convs.items():
        if name.endswith("depthwise.0") or name == "branch_b.0":
            assert conv.groups == conv.in_channels == conv.out_channels
    # concat: the head conv reads exactly what the two branches write
    assert pruned.head_conv[0].in_channels == pruned.branch_a[0].out_channels + pruned.branch_b[0].out_channels
    # residual sums: every block adding onto the stream writes the stream's width
    assert pruned.blocks[3].project[0].out_channels == pruned.blocks[4].project[0].out_channels
    assert pruned.blocks[1].project[0].out_channels == pruned.blocks[2].project[0].out_channels
    # squeeze-excite scales exactly the channels the depthwise conv produces
    for block in pruned.blocks:
        assert block.se.fc2.out_channels == block.se.fc1.in_channels == block.depthwise[0].out_channels
    assert result.report["params_ratio"] < 0.6


@pytest.mark.parametrize("keep_first_last, in_channels", [(True, 16), (False, 8)])
def test_grouped_conv_keeps_its_groups_and_reloads_from_checkpoint(tmp_path, keep_first_last, in_channels):
    ref = ModelRef(f"{__name__}:grouped_net", {})
    model = ref.build().eval()
    result = prune(model=model, example_inputs=X, ratio=0.5, keep_first_last=keep_first_last)
    grouped = result.model.grouped
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (4, in_channels, 8)
    assert result.model.stem.out_channels == in_channels
    assert result.transform["config"]["conv_groups"] == {"grouped": 4}
    path = save_checkpoint(tmp_path / "grouped.pt", result.model, ref=ref, transforms=[result.transform])
    reloaded = load_checkpoint(path, trusted_factories=[ref.factory]).model  # the test's own factory: trusted
    torch.testing.assert_close(reloaded(X), result.model(X), rtol=0, atol=0)


def test_round_kept_rounds_to_the_nearest_multiple_and_never_to_zero():
    assert round_kept(12, 16, 24) == 16  # Torch-Pruning floors this to 0 and skips the group
    assert round_kept(4, 8, 8) == 8  # a group no wider than one multiple is kept whole
    assert round_kept(0.3, 8, 64) == 8
    assert round_kept(19.9, 8, 64) == 16 and round_kept(20, 8, 64) == 24
    assert round_kept(0.2, 1, 5) == 1
    assert round_kept(40, 16, 32) == 32  # never above what is there


@pytest.mark.parametrize("multiple", [8, 16])
def test_channel_multiple_rounds_every_pruned_group(multiple):
    model = _mobilenet(width=16)
    plain = prune(model=model, example_inputs=X, ratio=0.5, global_pruning=True)
    rounded = prune(model=model, example_inputs=X, ratio=0.5, global_pruning=True, channel_multiple=multiple)
    assert any(g["after"] % multiple for g in plain.report["groups"])  # global ranking gives ragged widths
    for group in rounded.report["groups"]:
        assert group["after"] > 0
        assert group["after"] % multiple == 0 or group["after"] == group["before"] < multiple, group
    assert rounded.model(X).shape == (2, 10)


def test_iterative_steps_call_recovery_after_each_step_and_keep_its_weights():
    model = _mobilenet()
    widths = []

    def recovery(pruned, step):
        widths.append((step, pruned.head_conv[0].out_channels))
        recovered = copy.deepcopy(pruned)
        with torch.no_grad():
            recovered.fc.bias.fill_(float(step))
        return recovered

    result = prune(model=model, example_inputs=X, ratio=0.5, steps=3, recovery=recovery)
    assert [s for s, _ in widths] == [1, 2, 3]
    assert widths[0][1] > widths[1][1] > widths[2][1] == 32  # 64 -> 53 -> 43 -> 32 (1/6 of the initial per step)
    assert torch.equal(result.model.fc.bias, torch.full((10,), 3.0))


def test_taylor_importance_prunes_the_channel_the_loss_does_not_see():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():
        model[0].weight[0] *= 100.0  # the largest channel by magnitude ...
        model[2].weight[:, 0] = 0.0  # ... that nothing downstream reads
    teacher = copy.deepcopy(model)
    loss_fn = calibration_loss(batches=[X], teacher=teacher,
                               criterion=lambda s, t, _y: nn.functional.mse_loss(s, t + 1.0))
    by_taylor = prune(model=model, example_inputs=X, ratio=0.25, importance="taylor", loss_fn=loss_fn,
                      keep_first_last=False)
    by_magnitude = prune(model=model, example_inputs=X, ratio=0.25, keep_first_last=False)
    first = model[0].weight
    assert not any(torch.equal(w, first[0]) for w in by_taylor.model[0].weight)
    assert any(torch.equal(w, first[0]) for w in by_magnitude.model[0].weight)


def test_bn_scale_importance_keeps_the_channels_with_the_largest_batchnorm_scale():
    model = _mobilenet()
    with torch.no_grad():
        gamma = model.branch_a[1].weight
        gamma.copy_(torch.linspace(0.1, 1.0, len(gamma)))
    result = prune(model=model, example_inputs=X, ratio=0.5, importance="bn_scale")
    kept = result.model.branch_a[1].weight.detach()
    assert torch.equal(torch.sort(kept).values, torch.sort(gamma.detach()).values[len(gamma) // 2:])


def test_count_params_macs_matches_a_hand_count():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    params, macs = count_params_macs(model=model, example_inputs=X[:1])
    assert params == 4 * 9 + 4 * 6 * 6 * 5 + 5
    assert macs == 4 * 9 * 6 * 6 + 4 * 6 * 6 * 5


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, True, "0.5", float("nan")])
def test_ratio_outside_zero_one_is_bad_input(ratio):
    with pytest.raises(BadInput, match="ratio"):
        prune(model=_mobilenet(), example_inputs=X, ratio=ratio)


def test_bad_arguments_are_named():
    model = _mobilenet()
    with pytest.raises(BadInput, match="no layer named 'blocks.9' in MobileNet \\(close matches: blocks.4"):
        prune(model=model, example_inputs=X, ratio=0.5, ignore_layers=["blocks.9"])
    with pytest.raises(BadInput, match="taylor.*loss_fn"):
        prune(model=model, example_inputs=X, ratio=0.5, importance="taylor")
    with pytest.raises(BadInput, match="importance must be one of"):
        prune(model=model, example_inputs=X, ratio=0.5, importance="l1")
    with pytest.raises(BadInput, match="channel_multiple"):
        prune(model=model, example_inputs=X, ratio=0.5, channel_multiple=0)
    with pytest.raises(BadInput, match="does not run on example_inputs.*stem.0"):
        prune(model=model, example_inputs=torch.randn(1, 3, 8, 8), ratio=0.5)
    no_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3))
    with pytest.raises(BadInput, match="no batch-norm"):
        prune(model=no_bn, example_inputs=X, ratio=0.5, importance="bn_scale")
    # first and last layers are protected by default: a two-conv model has nothing left to prune
    with pytest.raises(BadInput, match="nothing was pruned from Sequential at ratio 0.5"):
        prune(model=no_bn, example_inputs=X, ratio=0.5)


def test_ignored_layer_keeps_its_outputs():
    result = prune(model=_mobilenet(), example_inputs=X, ratio=0.5, ignore_layers=["branch_a"])
    assert result.model.branch_a[0].out_channels == 32
    assert result.model.branch_b[0].out_channels == 16


def test_a_model_the_tracer_cannot_follow_is_bad_input_naming_the_layer_or_op():
    with pytest.raises(BadInput, match="cannot follow the output of layer 'a' \\(Conv2d\\)"):
        prune(model=DetachNet(), example_inputs=X, ratio=0.5)
    with pytest.raises(BadInput, match="no longer runs.*module 'fc' \\(Linear\\) at test_prune.py:\\d+ `.*`"):
        prune(model=HardCodedNet(), example_inputs=X, ratio=0.5)
