"""PyTorch's own attention (nn.MultiheadAttention, nn.TransformerEncoder/DecoderLayer) pruned and quantized.

edgekd.nn_swap rebuilds nn.MultiheadAttention from Linear projections and MatMul modules with the
same weights and outputs; pruning then cuts whole heads and the FFN through Torch-Pruning's graph,
every projection and both attention matmuls quantize and run as INT8 kernels, and checkpoints
replay the swap inside the "prune" and "fake-quant" transforms.
"""

import itertools

import pytest
import torch
from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.data import load_data
from edgekd.errors import BadInput
from edgekd.export import export
from edgekd.models import ModelRef, ViT
from edgekd.nn_swap import LinearMultiheadAttention, swap_attention
from edgekd.prune import prune
from edgekd.quant import QuantReport, calibrate, checkpoint_transform, prepare
from edgekd.quant.modules import QuantLinear, QuantMatMul
from edgekd.targets import load_target

X86 = load_target("x86-cpu-onnxruntime").quantization
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "qk_matmul", "av_matmul")


class AttentionPoolCNN(nn.Module):
    """A CNN whose features are pooled by nn.MultiheadAttention from a learned query."""

    def __init__(self, width: int = 32, heads: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.pool = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        tokens = self.body(self.stem(x)).flatten(2).transpose(1, 2)
        pooled, _ = self.pool(self.query.expand(x.shape[0], -1, -1), tokens, tokens)  # need_weights: the default
        return self.head(pooled[:, 0])


def tiny_vit() -> nn.Module:
    """A tiny ViT of PyTorch's standard layers, with the encoder's nested-tensor fast path on (its default)."""
    return ViT(dim=32, heads=4, layers=2, ffn=64, nested_tensor=True)


def attention_pool_cnn() -> nn.Module:
    return AttentionPoolCNN()


@pytest.fixture(scope="module")
def digits():
    """Digits upsampled to 16x16: realistic calibration and parity inputs."""
    data = load_data("digits16")
    return torch.from_numpy(data.x_train[:128]), data.x_val[:64]


def _built(factory) -> nn.Module:
    torch.manual_seed(0)
    return ModelRef(f"{__name__}:{factory.__name__}", {}).build().eval()


# ---- the swap: same weights, same outputs ----------------------------------------------------------

MASKS = [(None, None), ("bool", None), ("float", None), (None, "2d"), (None, "3d"), ("bool", "bool2d"),
         ("float", "2d")]


def _masks(kind_kpm, kind_attn, batch, heads, tgt, src):
    kw = {}
    if kind_kpm == "bool":
        kw["key_padding_mask"] = torch.zeros(batch, src, dtype=torch.bool)
        kw["key_padding_mask"][0, -2:] = True
    elif kind_kpm == "float":
        kw["key_padding_mask"] = torch.randn(batch, src)
    if kind_attn == "2d":
        kw["attn_mask"] = torch.randn(tgt, src)
    elif kind_attn == "3d":
        kw["attn_mask"] = torch.randn(batch * heads, tgt, src)
    elif kind_attn == "bool2d":
        kw["attn_mask"] = torch.zeros(tgt, src, dtype=torch.bool)
        kw["attn_mask"][:, 0] = True
    return kw


@pytest.mark.parametrize("batch_first, bias", [(True, True), (False, True), (True, False)])
def test_swap_computes_what_multihead_attention_computes(batch_first, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first).eval()
    swapped = LinearMultiheadAttention.from_float(mha).eval()
    assert (swapped.embed_dim, swapped.num_heads, swapped.head_dim, swapped.batch_first) == (32, 4, 8, batch_first)
    batch, tgt, src = 3, 5, 7
    query, key = torch.randn(batch, tgt, 32), torch.randn(batch, src, 32)
    if not batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    worst = 0.0
    for (kpm, attn), need_weights, average, grad in itertools.product(MASKS, (True, False), (True, False),
                                                                      (True, False)):
        kw = _masks(kpm, attn, batch, 4, tgt, src)
        with torch.set_grad_enabled(grad):  # no grad: PyTorch's fused kernels; with grad: its Python path
            want = mha(query, key, key, need_weights=need_weights, average_attn_weights=average, **kw)
            got = swapped(query, key, key, need_weights=need_weights, average_attn_weights=average, **kw)
        worst = max(worst, float((got[0] - want[0]).detach().abs().max()))
        if need_weights:
            assert got[1].shape == want[1].shape
            worst = max(worst, float((got[1] - want[1]).detach().abs().max()))
        else:
            assert got[1] is None
    assert worst < 1e-6, worst
    x = torch.randn(6, 32)  # unbatched (L, E)
    for want, got in zip(mha(x, x, x, average_attn_weights=False), swapped(x, x, x, average_attn_weights=False)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_swap_replaces_every_attention_shares_nothing_and_loads_packed_state_dicts():
    model = _built(tiny_vit)
    reference = _built(tiny_vit)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        want = reference(x)
    swap = swap_attention(model)
    assert swap.swapped == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"] and swap.refused == {}
    assert not model.encoder.use_nested_tensor
    a, b = (layer.self_attn for layer in model.encoder.layers)
    assert isinstance(a, LinearMultiheadAttention) and a.q_proj.weight.data_ptr() != b.q_proj.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
    fresh = _built(tiny_vit)
    swap_attention(fresh)
    fresh.load_state_dict(reference.state_dict())  # nn.MultiheadAttention's packed in_proj_weight splits into q/k/v
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=0, atol=1e-5)
    assert swap_attention(model).swapped == []  # nothing left to swap


class Refused(nn.Module):
    def __init__(self):
        super().__init__()
        self.kdim = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)
        self.bias_kv = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)
        self.zero_attn = nn.MultiheadAttention(16, 2, add_zero_attn=True, batch_first=True)
        self.fine = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        y = self.kdim(x, x[..., :8], x[..., :8])[0] + self.bias_kv(x, x, x)[0] + self.zero_attn(x, x, x)[0]
        return self.fine(y, y, y)[0]


def test_what_cannot_be_swapped_stays_and_says_why():
    model = Refused().eval()
    swap = swap_attention(model)
    assert swap.swapped == ["fine"]
    assert set(swap.refused) == {"kdim", "bias_kv", "zero_attn"}
    assert "kdim=8" in swap.refused["kdim"] and "add_bias_kv" in swap.refused["bias_kv"]
    assert "add_zero_attn" in swap.refused["zero_attn"]
    assert type(model.kdim) is nn.MultiheadAttention
    with pytest.raises(BadInput, match="add_bias_kv"):
        swap_attention(Refused(), names=["bias_kv"])
    with pytest.raises(BadInput, match="no such module"):
        swap_attention(Refused(), names=["missing"])
    quantized = prepare(model=Refused().eval(), scheme=X86)
    reasons = {f["name"]: f["reason"] for f in QuantReport.of(quantized).float_layers}
    assert set(reasons) == {"kdim", "bias_kv", "zero_attn"} and "kdim=8" in reasons["kdim"]
    assert {e["name"] for e in QuantReport.of(quantized).quantized} == {f"fine.{p}" for p in PROJECTIONS}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the unswapped encoder's fused path
def test_transformer_layers_take_the_python_path_after_the_swap(monkeypatch):
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2).eval()
    decoder = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True  # left-aligned: the encoder would run its nested-tensor path
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        want_plain = encoder(src)
        want_padded = encoder(src, src_key_padding_mask=padding)
        want_decoded = decoder(tgt, src, tgt_mask=causal, tgt_is_causal=True)
    assert encoder.use_nested_tensor

    def fused(*args, **kwargs):
        raise AssertionError("a fused PyTorch attention kernel ran")

    for name in ("_transformer_encoder_layer_fwd", "_native_multi_head_attention", "_nested_tensor_from_mask"):
        monkeypatch.setattr(torch, name, fused)
    with torch.no_grad(), pytest.raises(AssertionError, match="fused"):
        encoder(src)  # the check is real: unswapped, the fused path runs
    swap_attention(encoder)
    swap_attention(decoder)
    assert [type(m) for m in (decoder.self_attn, decoder.multihead_attn)] == [LinearMultiheadAttention] * 2
    with torch.no_grad():
        torch.testing.assert_close(encoder(src), want_plain, rtol=0, atol=1e-5)
        got = encoder(src, src_key_padding_mask=padding)
        torch.testing.assert_close(got[~padding], want_padded[~padding], rtol=0, atol=1e-5)  # fused pads with 0
        torch.testing.assert_close(decoder(tgt, src, tgt_mask=causal, tgt_is_causal=True), want_decoded,
                                   rtol=0, atol=1e-5)


# ---- pruning: whole heads, FFN width, embedding width ----------------------------------------------

def _prunable(model: nn.Module) -> int:
    """Parameters of the encoder's projections and FFNs (the residual width is the stem's, kept by default)."""
    return sum(p.numel() for layer in model.encoder.layers for name, p in layer.named_parameters()
               if not name.startswith("norm"))


def test_prune_half_of_a_vit_cuts_whole_heads_and_the_ffn(digits):
    model = _built(tiny_vit)
    x = torch.from_numpy(digits[1][:1])
    result = prune(model=model, example_inputs=x, ratio=0.5)
    pruned, report = result.model, result.report
    removed = (_prunable(_built(tiny_vit)) - _prunable(pruned)) / _prunable(_built(tiny_vit))
    assert 0.45 <= removed <= 0.55, removed
    assert 0.5 <= report["params_ratio"] <= 0.6, report["params_ratio"]
    assert report["macs_ratio"] < 1.0, report["macs_ratio"]  # the unpruned count includes the attention projections
    for layer in pruned.encoder.layers:
        attention = layer.self_attn
        assert isinstance(attention, LinearMultiheadAttention)
        assert (attention.num_heads, attention.head_dim, attention.embed_dim) == (2, 8, 32)  # 2 whole heads of 8
        assert [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features,
                attention.out_proj.in_features] == [16] * 4
        assert (layer.linear1.out_features, layer.linear2.in_features) == (32, 32)
    heads = [g for g in report["groups"] if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["before"] == 4 and g["after"] == 2 and len(g["kept_heads"]) == 2 for g in heads)
    assert report["attention_swap"]["swapped"] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert result.transform["config"]["attention_swap"] == report["attention_swap"]["swapped"]
    assert type(model.encoder.layers[0].self_attn) is nn.MultiheadAttention  # the input model is untouched
    # Whole heads: each pruned attention computes the original one with the other heads' outputs zeroed.
    tokens = torch.randn(3, 17, 32)
    for i, group in enumerate(sorted(heads, key=lambda g: g["group"])):
        original = LinearMultiheadAttention.from_float(model.encoder.layers[i].self_attn)
        with torch.no_grad():
            for head in set(range(4)) - set(group["kept_heads"]):
                original.out_proj.weight[:, head * 8:(head + 1) * 8] = 0
            torch.testing.assert_close(pruned.encoder.layers[i].self_attn(tokens, tokens, tokens)[0],
                                       original(tokens, tokens, tokens)[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert pruned(torch.from_numpy(digits[1][:5])).shape == (5, 10)


def test_prune_can_narrow_the_residual_stream_consistently():
    model = _built(tiny_vit)
    result = prune(model=model, example_inputs=torch.rand(1, 1, 16, 16), ratio=0.5, keep_first_last=False)
    pruned = result.model
    width = pruned.patch_embed.out_channels
    assert width == 16
    assert pruned.cls_token.shape[-1] == pruned.pos_embed.shape[-1] == pruned.head.in_features == width
    assert pruned.norm.normalized_shape == (width,)
    for layer in pruned.encoder.layers:
        attention = layer.self_attn
        assert attention.q_proj.in_features == attention.k_proj.in_features == attention.embed_dim == width
        assert layer.linear1.in_features == layer.linear2.out_features == width
        assert layer.norm1.normalized_shape == layer.norm2.normalized_shape == (width,)
        assert attention.num_heads == 2
    assert pruned(torch.rand(3, 1, 16, 16)).shape == (3, 10)


def test_prune_an_attention_pooling_cnn():
    model = _built(attention_pool_cnn)
    result = prune(model=model, example_inputs=torch.rand(1, 1, 16, 16), ratio=0.5)
    pool = result.model.pool
    assert isinstance(pool, LinearMultiheadAttention) and (pool.num_heads, pool.head_dim) == (2, 8)
    assert pool.k_proj.in_features == pool.v_proj.in_features == result.model.body[0].out_channels == 16
    assert 0.35 <= result.report["params_ratio"] <= 0.55, result.report["params_ratio"]
    assert result.model(torch.rand(3, 1, 16, 16)).shape == (3, 10)


# ---- quantization: every projection and both matmuls, as INT8 kernels --------------------------------

@pytest.mark.parametrize("factory, pruned", [(tiny_vit, True), (attention_pool_cnn, False)])
def test_every_projection_and_matmul_quantizes_and_runs_int8(factory, pruned, digits, tmp_path):
    calibration, held_out = digits
    model = _built(factory)
    if pruned:
        model = prune(model=model, example_inputs=calibration[:1], ratio=0.5).model
    quantized = prepare(model=model, scheme=X86)
    attention = [n for n, m in quantized.named_modules() if isinstance(m, LinearMultiheadAttention)]
    report = QuantReport.of(quantized)
    names = {entry["name"] for entry in report.quantized}
    assert report.float_layers == [] and report.graph == "torch.fx graph"
    assert {f"{a}.{p}" for a in attention for p in PROJECTIONS} <= names
    if factory is tiny_vit:
        assert {f"encoder.layers.{i}.{ffn}" for i in (0, 1) for ffn in ("linear1", "linear2")} <= names
        q = next(e for e in report.quantized if e["name"] == "encoder.layers.0.self_attn.k_proj")
        assert q["shares_input_with"] == "encoder.layers.0.self_attn.q_proj.input_quantizer"  # one Q for q, k, v
    assert isinstance(quantized.get_submodule(f"{attention[0]}.q_proj"), QuantLinear)
    assert isinstance(quantized.get_submodule(f"{attention[0]}.qk_matmul"), QuantMatMul)
    # QAT trains through it: gradients reach the projections' weights through the fake quantizers.
    calibrate(model=quantized, inputs=[calibration[:64], calibration[64:]])
    quantized.train()
    quantized(calibration[:8]).square().mean().backward()
    assert quantized.get_submodule(f"{attention[0]}.q_proj").weight.grad.abs().sum() > 0
    quantized.eval().zero_grad()
    result = export(model=quantized, example_inputs=calibration[:1], out_dir=tmp_path, formats=["onnx"],
                    parity_inputs=held_out)
    onnx = result.int8_kernels["onnx"]
    assert result.gate_passed and result.int8_executed["onnx"]
    assert onnx["expected"] == len(names) and sum(onnx["kernels"].values()) == len(names) and onnx["coverage"] == 1.0
    matmuls = onnx["kernels"].get("QLinearMatMul", 0) + onnx["kernels"].get("MatMulIntegerToFloat", 0)
    assert matmuls >= 6 * len(attention)  # q/k/v/out projections (3-D inputs) and both attention matmuls
    assert result.parity["onnx"]["top1_agreement"] >= 0.95


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.transformer = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.transformer(self.embed(src), self.embed(tgt), tgt_mask=mask, tgt_is_causal=True))


def test_the_plan_sees_inside_encoder_and_decoder_layers():
    torch.manual_seed(0)
    model = Seq2Seq().eval()
    src, tgt = torch.rand(2, 7, 8), torch.rand(2, 5, 8)
    quantized = prepare(model=model, scheme=X86)
    report = QuantReport.of(quantized)
    attention = ["transformer.encoder.layers.0.self_attn", "transformer.decoder.layers.0.self_attn",
                 "transformer.decoder.layers.0.multihead_attn"]
    ffn = [f"transformer.{part}.layers.0.{linear}" for part in ("encoder", "decoder")
           for linear in ("linear1", "linear2")]
    assert report.graph == "torch.fx graph" and report.float_layers == []
    assert {e["name"] for e in report.quantized} == ({f"{a}.{p}" for a in attention for p in PROJECTIONS}
                                                     | set(ffn) | {"embed", "head"})
    with torch.no_grad():  # quantizers are off until calibrated: the float model, computed by the swapped layers
        torch.testing.assert_close(quantized(src, tgt), model(src, tgt), rtol=0, atol=1e-5)


# ---- checkpoints: the swap replays inside the prune and fake-quant transforms ------------------------

def test_pruned_and_fake_quantized_swaps_reload_from_checkpoints(digits, tmp_path):
    calibration, held_out = digits
    x = torch.from_numpy(held_out[:16])
    for factory in (tiny_vit, attention_pool_cnn):
        ref = ModelRef(f"{__name__}:{factory.__name__}", {})
        trusted = [ref.factory]  # the test's own factory
        result = prune(model=_built(factory), example_inputs=calibration[:1], ratio=0.5)
        path = save_checkpoint(tmp_path / "pruned.pt", result.model, ref=ref, transforms=[result.transform])
        reloaded = load_checkpoint(path, trusted_factories=trusted).model
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
        for base, transforms in ((result.model, [result.transform]), (_built(factory), [])):
            quantized = prepare(model=base, scheme=X86)
            calibrate(model=quantized, inputs=[calibration])
            quantized.eval()
            step = checkpoint_transform(quantized)
            assert step["config"]["attention_swap"]
            path = save_checkpoint(tmp_path / "quantized.pt", quantized, ref=ref, transforms=transforms + [step])
            reloaded = load_checkpoint(path, trusted_factories=trusted).model
            assert any(isinstance(m, QuantMatMul) for m in reloaded.modules())
            with torch.no_grad():
                torch.testing.assert_close(reloaded(x), quantized(x), rtol=0, atol=0)
