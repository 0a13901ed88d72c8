"""Causal LM teachers and students on the tiny Llama (4 layers, 4 query / 2 KV heads, FFN 128): loading a
folder and what it refuses, the layers a `layers:N` student keeps, width cuts that keep grouped-query
attention and the KV cache consistent, save/reload, and the ladder."""

from __future__ import annotations

import json

import pytest
import torch

from edgekd.errors import BadInput
from edgekd.lm.model import CausalLM, is_causal_lm_source, load_causal_lm, save_causal_lm
from edgekd.lm.students import lm_ladder, make_lm_student
from edgekd.lm.tiny import tiny_causal_lm, tiny_tokenizer, write_tiny_causal_lm

HEAD_DIM = 16


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    return load_causal_lm(tiny_dir)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(4, 100, (2, 10), generator=torch.Generator().manual_seed(0))


def _logits(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def _greedy(model: CausalLM, ids: torch.Tensor, *, use_cache: bool) -> torch.Tensor:
    return model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, use_cache=use_cache, pad_token_id=3)


def _rewrite_config(directory, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_loads_a_folder_to_the_models_own_logits(tiny_dir, teacher, ids):
    assert is_causal_lm_source(tiny_dir)
    assert teacher.gguf_file is None and teacher.config.num_hidden_layers == 4
    logits = _logits(teacher, ids)
    assert logits.dtype == torch.float32 and logits.shape == (2, 10, 100)
    with torch.no_grad():
        expected = tiny_causal_lm()(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    tokens = teacher.tokenizer()("Hi!").input_ids
    assert teacher.tokenizer().decode(tokens) == "Hi!" and teacher.tokenizer() is teacher.tokenizer()


def test_what_is_not_a_causal_lm_source(tmp_path):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert not is_causal_lm_source(tmp_path / "encoder")
    assert not is_causal_lm_source(tmp_path / "missing.gguf")
    assert is_causal_lm_source(tmp_path / "model.gguf")
    with pytest.raises(BadInput, match="no such GGUF file"):
        load_causal_lm(tmp_path / "missing.gguf")


def test_refuses_pickled_weights(tmp_path):
    directory = write_tiny_causal_lm(tmp_path / "lm")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(BadInput, match="pytorch_model.bin: pickled"):
        load_causal_lm(directory)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "my_lm", "auto_map": {"AutoModelForCausalLM": "modeling_my_lm.MyLM"}},
     r"model_type 'my_lm' is not supported .*supported: llama, qwen2, qwen3, mistral"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"num_hidden_layers": 100_000}, r"config.json: num_hidden_layers = 100000; .* 1..256"),
    ({"vocab_size": 10**9}, r"vocab_size = 1000000000"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
])
def test_refuses_configs_outside_the_allow_list_and_bounds(tmp_path, changes, message):
    directory = write_tiny_causal_lm(tmp_path / "lm")
    _rewrite_config(directory, **changes)
    with pytest.raises(BadInput, match=message):
        load_causal_lm(directory)


def test_layers_student_copies_evenly_spaced_teacher_layers(teacher, ids):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = make_lm_student(teacher, "layers:2")
    assert student.report["layers"] == [0, 3]  # both ends
    layers = student.model.hf.model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    assert student.model.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for index, kept in enumerate([0, 3]):
        teacher_layer = teacher.hf.model.layers[kept].state_dict()
        for name, tensor in layers[index].state_dict().items():
            assert torch.equal(tensor, teacher_layer[name]), (index, name)
    assert student.model.hf.lm_head.weight is student.model.hf.model.embed_tokens.weight  # still tied
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert torch.equal(_greedy(student.model, ids, use_cache=True), _greedy(student.model, ids, use_cache=False))


def test_full_depth_student_is_the_teacher(teacher, ids):
    student = make_lm_student(teacher, "layers:4")
    assert student.report["param_fraction"] == 1.0
    assert torch.equal(_logits(student.model, ids), _logits(teacher, ids))


def test_prune_keeps_whole_kv_groups_and_the_cache_consistent(teacher, ids):
    student = make_lm_student(teacher, "prune:0.5")
    report = student.report
    assert (report["heads"], report["kv_heads"], report["intermediate_size"]) == (2, 1, 64)
    config = student.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, HEAD_DIM)
    assert config.intermediate_size == 64 and config.hidden_size == 64
    for layer in student.model.hf.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert attention.q_proj.weight.shape == (2 * HEAD_DIM, 64) and attention.o_proj.weight.shape == (64, 32)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (HEAD_DIM, 64)
        assert attention.num_key_value_groups == 2
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == mlp.down_proj.weight.shape == (64, 64)
    assert report["params_after"] == sum(p.numel() for p in student.model.parameters()) < report["params_before"]
    assert torch.equal(_greedy(student.model, ids, use_cache=True), _greedy(student.model, ids, use_cache=False))


def test_width_cut_keeps_the_important_group_and_neurons(tiny_dir, ids):
    teacher = load_causal_lm(tiny_dir)
    layer = teacher.hf.model.layers[0]
    with torch.no_grad():  # make KV group 0 and neuron 5 negligible: they are the ones to go
        layer.self_attn.v_proj.weight[:HEAD_DIM] *= 1e-3
        layer.mlp.down_proj.weight[:, 5] = 0
    student = make_lm_student(teacher, "layers:4,ffn:0.5,heads:2")
    attention, mlp = student.model.hf.model.layers[0].self_attn, student.model.hf.model.layers[0].mlp
    # group 1 (query heads 2 and 3, KV head 1) is what remains
    assert torch.equal(attention.q_proj.weight, layer.self_attn.q_proj.weight[2 * HEAD_DIM:])
    assert torch.equal(attention.k_proj.weight, layer.self_attn.k_proj.weight[HEAD_DIM:])
    assert torch.equal(attention.o_proj.weight, layer.self_attn.o_proj.weight[:, 2 * HEAD_DIM:])
    kept = [j for j in range(128) if any(torch.equal(mlp.up_proj.weight[i], layer.mlp.up_proj.weight[j])
                                          for i in range(64))]
    assert len(kept) == 64 and 5 not in kept
    assert torch.equal(_greedy(student.model, ids, use_cache=True), _greedy(student.model, ids, use_cache=False))


@pytest.mark.parametrize("spec, multiple, neurons", [
    ("layers:4,ffn:0.3", 1, 38), ("layers:4,ffn:0.3", 16, 32), ("layers:4,ffn:0.01", 16, 16),
    ("prune:0.7", 16, 48), ("prune:0.99", 1, 2),
])
def test_neuron_counts_follow_the_channel_multiple(teacher, spec, multiple, neurons):
    student = make_lm_student(teacher, spec, channel_multiple=multiple)
    assert student.report["intermediate_size"] == neurons
    assert student.model.hf.model.layers[0].mlp.down_proj.in_features == neurons


@pytest.mark.parametrize("spec, message", [
    ("layers:5", r"student 'layers:5': the teacher has 4 layers; layers:N needs N in 1..4"),
    ("layers:2,heads:3", r"groups of 2 .* H is one of 2, 4"),
    ("layers:2,heads:6", r"H is one of 2, 4"),
    ("auto", "expected prune:R or layers:N"),
    ("prune:1.5", r"prune:RATIO needs RATIO in \(0, 1\)"),
])
def test_bad_specs_name_the_teachers_limits(teacher, spec, message):
    with pytest.raises(BadInput, match=message):
        make_lm_student(teacher, spec)


def test_saved_student_reloads_to_the_same_logits(teacher, ids, tmp_path):
    student = make_lm_student(teacher, "layers:3,ffn:0.5,heads:2")
    saved = save_causal_lm(student.model, tmp_path / "student")
    reloaded = load_causal_lm(saved)
    assert reloaded.describe() == {**student.model.describe(), "source": str(saved.resolve())}
    assert torch.equal(_logits(reloaded, ids), _logits(student.model, ids))
    assert torch.equal(_greedy(reloaded, ids, use_cache=True), _greedy(student.model, ids, use_cache=False))
    assert reloaded.tokenizer()("abc").input_ids == tiny_tokenizer()("abc").input_ids


def test_ladder_specs_are_distinct_and_build_smallest_last(teacher):
    ladder = lm_ladder(teacher)
    assert ladder == ["layers:3", "layers:3,ffn:0.5", "layers:2", "layers:2,ffn:0.5", "layers:1"]
    params = [make_lm_student(teacher, spec).report["params_after"] for spec in ladder]
    assert params == sorted(params, reverse=True) and params[0] < sum(p.numel() for p in teacher.parameters())


def test_qwen2_student_slices_biases_and_layer_types(tmp_path, ids):
    """Qwen2: biased q/k/v projections and per-layer sliding-window types must follow the cut."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                         max_window_layers=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen", safe_serialization=True)
    tiny_tokenizer().save_pretrained(tmp_path / "qwen")
    teacher = load_causal_lm(tmp_path / "qwen")
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student = make_lm_student(teacher, "layers:2,heads:2")
    assert student.model.config.layer_types == ["full_attention", "sliding_attention"]
    attention, source = student.model.hf.model.layers[0].self_attn, teacher.hf.model.layers[0].self_attn
    group = next(g for g in range(2)
                 if torch.equal(attention.k_proj.weight, source.k_proj.weight[g * HEAD_DIM:][:HEAD_DIM]))
    for name, rows in (("q_proj", 2 * HEAD_DIM), ("k_proj", HEAD_DIM), ("v_proj", HEAD_DIM)):
        assert torch.equal(getattr(attention, name).bias, getattr(source, name).bias[group * rows:][:rows]), name
    assert torch.equal(_greedy(student.model, ids, use_cache=True), _greedy(student.model, ids, use_cache=False))
    reloaded = load_causal_lm(save_causal_lm(student.model, tmp_path / "student"))
    assert torch.equal(_logits(reloaded, ids), _logits(student.model, ids))
