"""Depth x width text-encoder students (`layers:N,ffn:F,heads:H`) on a tiny BERT in the sentence-transformers
layout: the spec grammar, the student's shapes, checkpoint reload, ONNX export with its Optimum config,
and the profile ladder's width candidates."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from edgekd.errors import BadInput
from edgekd.hf import encode_batch, load_sentence_encoder, load_tokenizer, make_student, student_ladder
from edgekd.student_spec import LayersSpec, PruneSpec, parse_student
from test_hf import SENTENCES, write_sentence_model  # the tiny BERT and its word-level tokenizer

TINY_FFN, TINY_HEADS = 64, 4  # write_sentence_model's intermediate_size and heads (4 layers)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = write_sentence_model(tmp_path_factory.mktemp("tiny-bert"))
    teacher, tokenizer = load_sentence_encoder(path=directory), load_tokenizer(path=directory)
    return teacher, tokenizer, encode_batch(tokenizer=tokenizer, texts=SENTENCES[:3])


def _outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


@pytest.mark.parametrize("spec, parsed", [
    ("layers:4", LayersSpec(4)),
    ("layers:4,ffn:0.6", LayersSpec(4, 0.6)),
    ("layers:4,ffn:0.6,heads:8", LayersSpec(4, 0.6, 8)),
    ("layers:4,heads:8,ffn:1", LayersSpec(4, 1.0, 8)),
    ("prune:0.25", PruneSpec(0.25)),
    ("auto", None), ("runs/student.pt", None), ("edgekd.models:resnet", None),
])
def test_specs_parse_in_one_place(spec, parsed):
    assert parse_student(spec) == parsed
    if parsed is not None:
        assert parse_student(str(parsed)) == parsed  # the canonical form the ladder writes reads back


@pytest.mark.parametrize("spec, message", [
    ("layers:4,ffn:1.5", "ffn:F needs F in (0, 1], got '1.5'"),
    ("layers:4,ffn:0", "ffn:F needs F in (0, 1], got '0'"),
    ("layers:4,ffn:nan", "ffn:F needs F in (0, 1]"),
    ("layers:4,heads:0", "heads:H needs a whole number H >= 1, got '0'"),
    ("layers:0,ffn:0.5", "layers:N needs a whole number N >= 1, got '0'"),
    ("layers:x", "layers:N needs a whole number N >= 1, got 'x'"),
    ("layers:4,width:0.5", "unknown axis 'width' in 'layers:4,width:0.5'; expected layers:N[,ffn:F][,heads:H]"),
    ("layers:4,ffn:0.5,ffn:0.6", "ffn is given twice"),
    ("prune:1.5", "prune:RATIO needs RATIO in (0, 1), got '1.5'"),
])
def test_bad_specs_say_what_is_wrong_in_the_parser_and_the_recipe(spec, message):
    from edgekd.recipe import load_recipe

    with pytest.raises(BadInput, match=re.escape(message)):
        parse_student(spec)
    with pytest.raises(BadInput) as err:
        load_recipe(None, student=spec)
    assert message in str(err.value)


def test_the_recipe_accepts_depth_by_width_specs():
    from edgekd.recipe import load_recipe

    assert load_recipe(None, student="layers:4,ffn:0.6,heads:8").student == "layers:4,ffn:0.6,heads:8"


def test_layers_and_half_the_ffn(tiny):
    teacher, _, inputs = tiny
    result = make_student(teacher=teacher, spec="layers:2,ffn:0.5", example_inputs=inputs, channel_multiple=8)
    student = result.model
    blocks = student.encoder.encoder.layer
    assert len(blocks) == 2 and student.config.num_hidden_layers == 2
    assert [b.intermediate.dense.out_features for b in blocks] == [TINY_FFN // 2] * 2
    assert [b.output.dense.in_features for b in blocks] == [TINY_FFN // 2] * 2
    assert [b.attention.self.num_attention_heads for b in blocks] == [TINY_HEADS] * 2  # heads untouched
    assert student.config.intermediate_size == TINY_FFN // 2
    assert result.report["layers"]["kept"] == [0, 3] and result.report["head_ratio"] == 0
    assert teacher.config.num_hidden_layers == 4 and teacher.config.intermediate_size == TINY_FFN  # untouched
    embeddings = _outputs(student, inputs)
    assert embeddings.shape == (3, 32) and torch.isfinite(embeddings).all()


def test_ffn_width_rounds_to_the_channel_multiple(tiny):
    teacher, _, inputs = tiny
    student = make_student(teacher=teacher, spec="layers:2,ffn:0.6", example_inputs=inputs, channel_multiple=16).model
    # 0.6 of 64 is 38.4: the nearest multiple of 16 is 32
    assert [b.intermediate.dense.out_features for b in student.encoder.encoder.layer] == [32, 32]


def test_heads_are_kept_whole_as_a_third_axis(tiny):
    teacher, _, inputs = tiny
    student = make_student(teacher=teacher, spec="layers:2,ffn:0.5,heads:2", example_inputs=inputs).model
    for block in student.encoder.encoder.layer:
        attention = block.attention.self
        shape = (attention.num_attention_heads, attention.attention_head_size, attention.query.out_features)
        assert shape == (2, 8, 16)  # whole heads of the teacher's size
        assert block.intermediate.dense.out_features == TINY_FFN // 2
    heads_only = make_student(teacher=teacher, spec="layers:3,heads:1", example_inputs=inputs).model
    assert [b.intermediate.dense.out_features for b in heads_only.encoder.encoder.layer] == [TINY_FFN] * 3
    assert [b.attention.self.num_attention_heads for b in heads_only.encoder.encoder.layer] == [1] * 3
    assert torch.isfinite(_outputs(heads_only, inputs)).all()
    with pytest.raises(BadInput, match="the teacher has 4 heads per layer"):
        make_student(teacher=teacher, spec="layers:2,heads:5", example_inputs=inputs)
    with pytest.raises(BadInput, match="the teacher has 4 layers"):
        make_student(teacher=teacher, spec="layers:5,ffn:0.5", example_inputs=inputs)


def test_full_width_is_the_layer_cut(tiny):
    teacher, _, inputs = tiny
    for spec in ("layers:2,ffn:1", f"layers:2,ffn:1.0,heads:{TINY_HEADS}"):
        result = make_student(teacher=teacher, spec=spec, example_inputs=inputs)
        assert result.report == make_student(teacher=teacher, spec="layers:2").report


@pytest.mark.parametrize("spec", ["layers:2,ffn:0.5", "layers:2,ffn:0.5,heads:2"])
def test_reloads_from_its_checkpoint_with_identical_outputs(tiny, tmp_path, spec):
    from edgekd.checkpoint import load_checkpoint, save_checkpoint
    from edgekd.hf import model_ref

    teacher, _, inputs = tiny
    result = make_student(teacher=teacher, spec=spec, example_inputs=inputs, channel_multiple=8)
    with torch.no_grad():
        result.model.encoder.encoder.layer[1].intermediate.dense.bias.fill_(0.3)  # trained weights, not the teacher's
    path = save_checkpoint(tmp_path / "student.pt", result.model, ref=model_ref(teacher), transforms=[result.transform])
    reloaded = load_checkpoint(path).model
    torch.testing.assert_close(_outputs(reloaded, inputs), _outputs(result.model, inputs), rtol=0, atol=0)
    # the replay leaves the config describing the student, as save_pretrained and the Optimum folder need
    assert (reloaded.config.num_hidden_layers, reloaded.config.intermediate_size) == (2, TINY_FFN // 2)
    assert reloaded.config.edgekd_pruning == result.model.config.edgekd_pruning


def test_exports_to_onnx_with_the_pruned_sizes_in_the_optimum_config(tiny, tmp_path):
    import onnxruntime as ort
    from transformers import AutoConfig

    from edgekd.hf import export_encoder, write_optimum_layout

    teacher, tokenizer, _ = tiny
    student = make_student(teacher=teacher, spec="layers:2,ffn:0.5,heads:2",
                           example_inputs=encode_batch(tokenizer=tokenizer, texts=SENTENCES[:2])).model
    texts = SENTENCES[2:]
    result = export_encoder(model=student, tokenizer=tokenizer, texts=texts, out_dir=tmp_path / "export",
                            formats=("onnx",))
    assert result.gate_passed and result.parity["onnx"]["cosine"] > 0.9999
    layout = write_optimum_layout(out_dir=tmp_path / "hf", encoder=student, tokenizer=tokenizer, onnx_path=result.onnx)
    saved = json.loads((layout / "config.json").read_text())
    assert (saved["num_hidden_layers"], saved["intermediate_size"]) == (2, TINY_FFN // 2)
    assert set(saved["edgekd_pruning"]["attention_heads"].values()) == {2}
    assert AutoConfig.from_pretrained(layout).intermediate_size == TINY_FFN // 2
    session = ort.InferenceSession(str(layout / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = encode_batch(tokenizer=tokenizer, texts=texts[:5])
    sentence, _ = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(sentence, _outputs(student, (ids, mask)).numpy(), atol=1e-5)


def test_the_ladder_has_width_candidates_most_parameters_first(tiny, tmp_path):
    from edgekd.data import load_data
    from edgekd.families import family_for

    teacher, _, inputs = tiny
    ladder = student_ladder(teacher)
    assert ladder == ["layers:4,ffn:0.75", "layers:4,ffn:0.5", "layers:3", "layers:3,ffn:0.75", "layers:3,ffn:0.5",
                      "layers:2", "layers:1"]
    params = [sum(p.numel() for p in make_student(teacher=teacher, spec=spec, example_inputs=inputs).model.parameters())
              for spec in ladder]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    assert family_for(model=teacher, data=load_data(str(corpus)), label="tiny").ladder() == ladder
    six = load_sentence_encoder(path=write_sentence_model(tmp_path / "six", layers=6))
    assert len(student_ladder(six)) == 11  # profiling a 6-layer teacher stays at a dozen candidates


def test_prune_sizes_heads_apart_from_channels_only_when_asked(tiny):
    from edgekd.prune import prune

    teacher, _, inputs = tiny
    with pytest.raises(BadInput, match=r"ratio must be a number in \(0, 1\)"):
        prune(model=teacher, example_inputs=inputs, ratio=0)
    with pytest.raises(BadInput, match="head_ratio must be a number in \\[0, 1\\) .* with prune_heads=True"):
        prune(model=teacher, example_inputs=inputs, ratio=0.5, head_ratio=0.5, prune_heads=False)
    with pytest.raises(BadInput, match=r"ratio must be a number in \(0, 1\)"):
        prune(model=teacher, example_inputs=inputs, ratio=0, head_ratio=0)
