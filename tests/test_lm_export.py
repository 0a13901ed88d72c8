"""Weight-only INT8/INT4 quantization, the KV-cache decoder export (ONNX + OpenVINO IR), the runtime decoders
and the generation parity gate, on the tiny Llama (4 layers, GQA 4/2 heads, vocab 100)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.errors import BadInput
from edgekd.lm import export as lm_export
from edgekd.lm.export import TraceCache, export_lm
from edgekd.lm.parity import GREEDY_MATCH_MIN, generation_parity
from edgekd.lm.tiny import tiny_causal_lm
from edgekd.lm.torch_decoder import TorchDecoder
from edgekd.lm.weight_quant import WeightOnlyEmbedding, WeightOnlyLinear, integer_weights, quantize_weights
from edgekd.runtimes.decoders import OrtDecoder, open_decoder, weight_precision
from edgekd.runtimes.decoding import DecoderState

LINEARS = 4 * 7  # q, k, v, o, gate, up, down per layer
PROMPT = np.array([[5, 17, 42, 8, 63, 21]], dtype=np.int64)
RUNTIMES = ("onnxruntime", "openvino")


def path_for(export, runtime):
    return export.onnx if runtime == "onnxruntime" else export.openvino_xml


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def trained_like(seed: int = 0):
    """The tiny Llama with its norm weights moved off 1.0, as training moves them: a fresh model's are all equal,
    and the exporter then stores one constant for all of them (which TraceCache refuses to refill)."""
    model = tiny_causal_lm(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An FP32 export and a weight-only one (layers 0-1 INT8 per channel, layers 2-3 INT4 group 32: both
    integer layouts) of the same tiny model, with their models; one trace (~20 s here) serves both, through
    the TraceCache a run's exports share, so the weight-only tests check a refilled graph."""
    fp32 = trained_like()
    quantized = trained_like()
    quantize_weights(quantized.model.layers[2:], bits=4, group_size=32)
    quantize_weights(quantized, bits=8)
    traced = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_export, "_trace", lambda *args, real=lm_export._trace: traced.append(1) or real(*args))
        traces = TraceCache()
        made = {"fp32": (fp32, export_lm(fp32, tmp_path_factory.mktemp("fp32"), traces=traces)),
                "int": (quantized, export_lm(quantized, tmp_path_factory.mktemp("int"), traces=traces))}
    assert len(traced) == 1
    return made


def test_a_graph_whose_constant_stands_for_two_weights_is_not_refilled():
    """Two weights with equal values that the exporter stored as one constant: refilling it with one of them
    would feed that to both layers, so the graph is not reused (the next model is traced)."""
    ones = np.ones(4, dtype=np.float32)
    nodes = [helper.make_node("Mul", ["x", "a.weight"], ["y"]), helper.make_node("Mul", ["y", "a.weight"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
                              [onnx.numpy_helper.from_array(ones, "a.weight")])
    proto = helper.make_model(graph)
    both = {"a.weight": ones, "b.weight": ones.copy()}
    assert lm_export._weight_sources(proto, both, {"a.weight", "b.weight"}) is None
    assert lm_export._weight_sources(proto, {"a.weight": ones}, {"a.weight"}) == {"a.weight": ("a.weight", False)}
    big = onnx.numpy_helper.from_array(np.arange(lm_export.SMALL_CONSTANT + 1, dtype=np.float32), "folded")
    proto.graph.initializer.append(big)  # a large constant that is no weight: something the exporter derived
    assert lm_export._weight_sources(proto, {"a.weight": ones}, {"a.weight"}) is None


def test_export_writes_the_decoder_interface(exports):
    model, export = exports["fp32"]
    assert (export.layers, export.kv_heads, export.head_dim, export.vocab) == (4, 2, 16, 100)
    graph = onnx.load(str(export.onnx), load_external_data=False).graph
    inputs = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids"} | {
        f"past_key_values.{i}.{k}" for i in range(4) for k in ("key", "value")}
    assert inputs["past_key_values.3.value"][1::2] == [2, 16]
    assert isinstance(inputs["input_ids"][0], str)  # dynamic batch
    assert [v.name for v in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    assert sorted(p.name for p in export.onnx.parent.iterdir()) == ["model.onnx", "openvino_model.bin",
                                                                    "openvino_model.xml"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_prefill_and_cached_decode_match_pytorch(exports, runtime):
    model, export = exports["fp32"]
    decoder, reference = open_decoder(path_for(export, runtime), runtime), TorchDecoder(model)
    logits, state = decoder.forward(PROMPT, decoder.start())
    expected, ref_state = reference.forward(PROMPT, reference.start())
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    for step in range(8):  # decode through the cache, one token at a time
        token = np.array([[int(np.argmax(logits[0, -1])) if step % 2 else 11 + step]], dtype=np.int64)
        logits, state = decoder.forward(token, state)
        expected, ref_state = reference.forward(token, ref_state)
        np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert state.length == PROMPT.shape[1] + 8 and state.past[0][0].shape == (1, 2, 14, 16)
    with torch.no_grad():  # the cache equals recomputing the whole sequence without one
        ids = np.concatenate([PROMPT[0], [0]])
        full = model(input_ids=torch.as_tensor(ids[None])).logits.numpy()
    truncated = decoder.truncate(state, PROMPT.shape[1])
    again, _ = decoder.forward(np.array([[0]]), truncated)
    np.testing.assert_allclose(again[0, -1], full[0, -1], atol=1e-4)
    assert decoder.truncate(state, 0).length == 0
    with pytest.raises(BadInput, match="truncate"):
        decoder.truncate(state, 99)


def test_quantization_reports_the_stored_size():
    int8 = quantize_weights(tiny_causal_lm(), bits=8)
    int4 = quantize_weights(tiny_causal_lm(), bits=4, group_size=32)
    embedding = 100 * 64  # vocab x hidden: the tied embedding and head, INT8 per row in both modes
    assert int8["layers"] == int4["layers"] == LINEARS and int8["embedding"] == int4["embedding"] == "int8 per row"
    assert int8["bytes_before"] == int4["bytes_before"] == 589824 + 4 * embedding
    # codes + an fp32 scale per row, for the projections and the embedding
    assert int8["bytes_after"] == 147456 + 4 * 4 * (64 + 32 + 32 + 64 + 128 + 128 + 64) + embedding + 4 * 100
    assert int4["bytes_after"] < int8["bytes_after"] * 0.75 and int4["group_size"] == 32


def test_the_embedding_and_its_tied_head_share_one_int8_per_row_grid():
    model = tiny_causal_lm()
    quantize_weights(model, bits=4, group_size=32)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, WeightOnlyEmbedding) and isinstance(head, WeightOnlyLinear) and head.bits == 8
    assert head.weight is embedding.weight  # still tied: one Parameter, one stored matrix
    assert torch.equal(embedding.quantized_weight(), head.quantized_weight())
    ids = torch.as_tensor(PROMPT)
    assert torch.equal(embedding(ids), embedding.quantized_weight()[ids])
    kept = tiny_causal_lm()
    assert quantize_weights(kept, bits=8, include_embedding=False)["embedding"] is None
    assert type(kept.get_input_embeddings()) is torch.nn.Embedding and type(kept.lm_head) is torch.nn.Linear


def test_weight_only_export_is_integer_and_matches_fake_quant(exports):
    fp32_size = exports["fp32"][1].onnx.stat().st_size
    model, export = exports["int"]
    assert export.onnx.stat().st_size < fp32_size * 0.4
    graph = onnx.load(str(export.onnx)).graph
    codes = Counter(t.data_type for t in graph.initializer if t.name.endswith(".codes"))
    assert codes == {TensorProto.INT8: LINEARS // 2 + 1, TensorProto.UINT4: LINEARS // 2}  # + the embedding
    float_matrices = [t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2
                      and not t.name.endswith(".scale")]
    assert float_matrices == []  # the tied embedding / head is stored once, as int8 codes
    expected, _ = TorchDecoder(model).forward(PROMPT, DecoderState())
    for runtime in RUNTIMES:
        decoder = open_decoder(path_for(export, runtime), runtime)
        logits, state = decoder.forward(PROMPT, decoder.start())
        assert cosine(logits, expected) >= 0.999
        assert decoder.forward(np.array([[7]]), state)[0].shape == (1, 1, 100)
        kinds = weight_precision(path_for(export, runtime), runtime)
        # the runtime keeps every projection integer, and the head tied to the embedding too
        assert (kinds["int8"], kinds["int4"], kinds["float"]) == (LINEARS // 2 + 1, LINEARS // 2, 0), kinds


def test_fp32_export_has_float_weights_and_greedy_parity(exports):
    model, export = exports["fp32"]
    assert weight_precision(export.onnx, "onnxruntime")["int8"] == 0
    prompts = [[5, 17, 42], [60, 1, 9, 33, 70], [88]]
    for runtime in RUNTIMES:
        result = generation_parity(model, path_for(export, runtime), runtime, prompts, new_tokens=12)
        assert result["greedy_token_match"] == 1.0 >= GREEDY_MATCH_MIN
        assert result["prefill_logits_cosine"] > 0.99999
        assert (result["prompts"], result["new_tokens"]) == (3, 12)


def test_qat_steps_move_the_float_weights_through_the_ste():
    model = tiny_causal_lm()
    quantize_weights(model, bits=4, group_size=32)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, WeightOnlyLinear)
    before = layer.weight.detach().clone()
    codes_before = integer_weights(layer)[0].clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.as_tensor(PROMPT)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(layer.weight.detach(), before)
    assert not torch.equal(integer_weights(layer)[0], codes_before)


def test_fake_quant_state_dict_reloads_into_a_reconverted_model():
    source = tiny_causal_lm(seed=1)
    quantize_weights(source, bits=8)
    target = tiny_causal_lm(seed=2)
    quantize_weights(target, bits=8)
    target.load_state_dict(source.state_dict())
    ids = torch.as_tensor(PROMPT)
    with torch.no_grad():
        assert torch.equal(source(input_ids=ids).logits, target(input_ids=ids).logits)
        float_logits = tiny_causal_lm(seed=1)(input_ids=ids).logits
    assert not torch.equal(source(input_ids=ids).logits.detach(), float_logits)  # the forward is quantized


def test_bad_quantization_settings_are_refused():
    with pytest.raises(BadInput, match="bits"):
        quantize_weights(tiny_causal_lm(), bits=3)
    with pytest.raises(BadInput, match=r"model\.layers\.0\.self_attn\.q_proj has 64 input features"):
        quantize_weights(tiny_causal_lm(hidden=64), bits=4, group_size=128)
    with pytest.raises(BadInput, match="tied"):
        quantize_weights(tiny_causal_lm(), bits=8, include_lm_head=True)


def test_a_graph_without_the_cache_inputs_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    with pytest.raises(BadInput, match="plain.onnx"):
        OrtDecoder(path)
    with pytest.raises(BadInput, match="runtime"):
        open_decoder(path, "tensorrt")


def test_a_divergence_at_a_pytorch_near_tie_counts_as_a_match_and_is_reported():
    """Where PyTorch's own top-2 logits are within TIE_MARGIN, any summation order picks either token: the
    gate must not fail a correct graph on it, nor pass a real divergence at a clear margin."""
    from edgekd.lm.generate import greedy_decode
    from edgekd.lm.parity import TIE_MARGIN, _tied_at_divergence

    reference = TorchDecoder(tiny_causal_lm(seed=3))
    wanted = greedy_decode(reference, PROMPT, 8)
    margins = []
    for step in range(8):
        context = np.concatenate([PROMPT, np.asarray([wanted[:step]], dtype=np.int64)], axis=1)
        top2 = np.sort(reference.forward(context, reference.start())[0][0, -1])[-2:]
        margins.append(top2[1] - top2[0])
        other = wanted[:step] + [(wanted[step] + 1) % reference.vocab_size] + wanted[step + 1:]
        assert _tied_at_divergence(reference, PROMPT, wanted, other) == (margins[-1] < TIE_MARGIN)
    assert not _tied_at_divergence(reference, PROMPT, wanted, wanted[:4])  # stopping early is a real difference
