"""Hugging Face encoder support on a tiny randomly initialised BERT saved in the sentence-transformers
layout, with a word-level tokenizer trained here: no download, seconds to run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import BadInput
from edgekd.hf import (SentenceEncoder, TextCollate, embedding_agreement, encode_batch, is_hf_model_dir,
                       layer_map, layer_names, layer_student, load_sentence_encoder, load_tokenizer, tokenize_texts)

SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore", "time flies like an arrow", "fruit flies like a banana",
    "all that glitters is not gold", "a penny saved is a penny earned", "the early bird catches the worm",
    "actions speak louder than words", "better late than never", "the pen is mightier than the sword",
    "when in rome do as the romans do", "a picture is worth a thousand words", "practice makes perfect",
    "do not count your chickens before they hatch", "the grass is always greener on the other side",
    "every cloud has a silver lining", "you can not judge a book by its cover", "an apple a day keeps the doctor away",
    "two heads are better than one", "rome was not built in a day", "the best things in life are free",
    "curiosity killed the cat", "birds of a feather flock together", "honesty is the best policy",
    "laughter is the best medicine", "knowledge is power", "still waters run deep", "look before you leap",
]


def build_tokenizer(directory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(directory)
    return fast


def write_sentence_model(directory, *, pooling: str = "mean", normalize: bool = True, layers: int = 4, seed: int = 0):
    """A tiny BERT in the sentence-transformers layout (transformer at the root, 1_Pooling, 2_Normalize)."""
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=0.2)  # large enough that the layers matter
    BertModel(config).save_pretrained(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{key: mode == pooling for mode, key in flags.items()}}))
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_sentence_model(tmp_path_factory.mktemp("tiny-minilm"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_sentence_encoder(path=tiny_dir), load_tokenizer(path=tiny_dir)


def _hidden_states(model_dir, ids, mask):
    """The raw Hugging Face model's token embeddings, loaded independently of edgekd."""
    from transformers import AutoModel

    with torch.no_grad():
        return AutoModel.from_pretrained(model_dir).eval()(input_ids=ids, attention_mask=mask).last_hidden_state


def test_loads_sentence_transformers_layout_with_mean_pooling_and_normalize(tiny_dir, tiny):
    encoder, tokenizer = tiny
    assert is_hf_model_dir(tiny_dir) and isinstance(encoder, SentenceEncoder)
    assert encoder.pooling.modes == ("mean",) and encoder.normalize
    assert encoder.encoder.pooler is None  # BERT's CLS pooler is replaced by the sentence pooling
    ids, mask = encode_batch(tokenizer=tokenizer, texts=SENTENCES[:4])
    assert mask.sum(1).min() < ids.shape[1]  # the batch really has padding
    hidden = _hidden_states(tiny_dir, ids, mask)
    expected = F.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    with torch.no_grad():
        got = encoder(ids, mask)
        implied_mask = encoder(ids)  # the mask follows from the padding
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(implied_mask, got)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(4))


def test_embedding_of_a_text_does_not_depend_on_batch_padding(tiny):
    encoder, tokenizer = tiny
    collate = TextCollate(tokenizer=tokenizer)
    with torch.no_grad():
        alone = encoder(collate(np.array(SENTENCES[4:5])))
        padded = encoder(collate(np.array(SENTENCES[2:5])))[2:]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_pooling_config_is_honoured(tmp_path, pooling):
    model_dir = write_sentence_model(tmp_path, pooling=pooling, normalize=False)
    encoder, tokenizer = load_sentence_encoder(path=model_dir), load_tokenizer(path=model_dir)
    ids, mask = encode_batch(tokenizer=tokenizer, texts=SENTENCES[:3])
    hidden = _hidden_states(model_dir, ids, mask)
    expected = hidden[:, 0] if pooling == "cls" else hidden.masked_fill(mask[..., None] == 0, -1e9).max(1).values
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids, mask), expected)
    assert not encoder.normalize


def test_bad_layouts_name_the_file_and_key(tmp_path, tiny_dir):
    with pytest.raises(BadInput, match="not a Hugging Face model directory"):
        load_sentence_encoder(path=tmp_path)
    model_dir = write_sentence_model(tmp_path / "dense")
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(BadInput, match=r"modules.json: module type 'sentence_transformers.models.Dense'"):
        load_sentence_encoder(path=model_dir)
    (model_dir / "modules.json").write_text(json.dumps(modules[:3]))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False}))
    with pytest.raises(BadInput, match=r"1_Pooling/config.json: no supported pooling mode"):
        load_sentence_encoder(path=model_dir)


def test_layer_map_spreads_evenly_and_keeps_both_ends():
    assert layer_map(teacher_layers=6, student_layers=3) == [0, 3, 5]
    assert layer_map(teacher_layers=12, student_layers=4) == [0, 4, 7, 11]
    assert layer_map(teacher_layers=6, student_layers=6) == list(range(6))
    assert layer_map(teacher_layers=6, student_layers=1) == [5]
    for teacher in range(2, 13):
        for student in range(2, teacher + 1):
            chosen = layer_map(teacher_layers=teacher, student_layers=student)
            assert chosen[0] == 0 and chosen[-1] == teacher - 1 and chosen == sorted(set(chosen))
    with pytest.raises(BadInput, match="layers:7"):
        layer_map(teacher_layers=6, student_layers=7)


def test_layer_student_copies_the_mapped_teacher_layers(tiny):
    teacher, tokenizer = tiny
    student = layer_student(teacher=teacher, num_layers=2).model
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert layer_names(student) == ["encoder.encoder.layer.0", "encoder.encoder.layer.1"]
    teacher_layers = teacher.encoder.encoder.layer
    for i, source in enumerate(layer_map(teacher_layers=4, student_layers=2)):
        got, want = student.encoder.encoder.layer[i].state_dict(), teacher_layers[source].state_dict()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    for key, value in teacher.encoder.embeddings.state_dict().items():
        assert torch.equal(student.encoder.embeddings.state_dict()[key], value)
    # A real copy: training the student leaves the teacher alone.
    with torch.no_grad():
        student.encoder.encoder.layer[0].output.dense.weight.add_(1.0)
    assert not torch.equal(student.encoder.encoder.layer[0].output.dense.weight,
                           teacher_layers[0].output.dense.weight)
    ids = TextCollate(tokenizer=tokenizer)(np.array(SENTENCES[:3]))
    with torch.no_grad():
        assert student(ids).shape == teacher(ids).shape == (3, 32)


def test_collate_pretokenized_and_raw_text_agree(tiny):
    _, tokenizer = tiny
    collate = TextCollate(tokenizer=tokenizer, max_length=6)
    texts = np.array(SENTENCES[:5])
    ids = tokenize_texts(tokenizer=tokenizer, texts=texts, max_length=6)
    assert ids.dtype == np.int64 and ids.shape == (5, 6)  # truncated to max_length
    torch.testing.assert_close(collate(texts), collate(ids))
    short = collate(np.array(["knowledge is power", "still waters"]))
    assert short.shape == (2, 5)  # [CLS] 3 words [SEP]: trimmed to the batch's longest
    assert short[1, -1].item() == tokenizer.pad_token_id
    with pytest.raises(BadInput, match="expected strings or a 2-D integer id array"):
        collate(np.zeros((2, 3), dtype=np.float32))


def test_embedding_agreement_identical_rotated_and_by_hand():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(20, 8))
    same = embedding_agreement(student_emb=teacher, teacher_emb=teacher)
    assert same["spearman"] == pytest.approx(1.0) and same["recall_at_10"] == 1.0
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    scaled = (teacher @ rotation) * rng.uniform(0.5, 2.0, size=(20, 1))  # cosine geometry unchanged
    assert embedding_agreement(student_emb=scaled, teacher_emb=teacher)["spearman"] == pytest.approx(1.0)

    student = teacher + rng.normal(scale=0.8, size=teacher.shape)
    result = embedding_agreement(student_emb=student, teacher_emb=teacher, pairs=2000, k=3)
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    sim_s, sim_t = unit(student) @ unit(student).T, unit(teacher) @ unit(teacher).T
    i, j = np.triu_indices(20, 1)  # 190 pairs < 2000: every pair is used
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert result["pairs"] == 190
    assert result["spearman"] == pytest.approx(np.corrcoef(rank(sim_s[i, j]), rank(sim_t[i, j]))[0, 1])
    hits = 0
    for row in range(20):
        order_s = [c for c in np.argsort(-sim_s[row]) if c != row][:3]
        order_t = [c for c in np.argsort(-sim_t[row]) if c != row][:3]
        hits += len(set(order_s) & set(order_t))
    assert result["recall_at_3"] == pytest.approx(hits / 60)
    assert 0 < result["recall_at_3"] < 1 and 0 < result["spearman"] < 1


def test_embedding_agreement_rejects_bad_shapes():
    with pytest.raises(BadInput, match="same N"):
        embedding_agreement(student_emb=np.zeros((12, 4)), teacher_emb=np.zeros((11, 4)))
    with pytest.raises(BadInput, match="recall@10 needs more than 10"):
        embedding_agreement(student_emb=np.ones((10, 4)), teacher_emb=np.ones((10, 4)))


def _toy_corpus(n: int, seed: int = 0) -> np.ndarray:
    """Random re-mixes of the tokenizer's sentences: in-vocabulary text of varied length."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    return np.array([" ".join(rng.choice(words, size=rng.integers(3, 14))) for _ in range(n)])


def test_embedding_metric_is_registered_for_distill(tiny):
    from edgekd.distill import evaluate

    teacher, tokenizer = tiny
    texts = _toy_corpus(40)
    collate = TextCollate(tokenizer=tokenizer)
    same = evaluate(teacher, texts, teacher=teacher, task="embedding", collate=collate)
    assert same["spearman"] == pytest.approx(1.0) and same["recall_at_10"] == 1.0
    assert same["teacher_agreement"] == same["spearman"]
    cut = evaluate(layer_student(teacher=teacher, num_layers=1).model, texts, teacher=teacher, task="embedding",
                   collate=collate)
    assert cut["spearman"] < 0.95


def test_kd_run_improves_agreement_with_the_teacher(tiny, tmp_path):
    from edgekd.data import Dataset
    from edgekd.distill import distill, evaluate
    from edgekd.hf import encoder_kd_config

    teacher, tokenizer = tiny
    student = layer_student(teacher=teacher, num_layers=2).model
    texts = _toy_corpus(300)
    data = Dataset("toy", "embedding", texts[:200], None, texts[200:240], None, texts[240:], None, None, "toy")
    config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, epochs=4, batch_size=32,
                               lr=3e-3, seed=0)
    assert not config.cache and not config.response  # feature hints need the live teacher
    assert all(m.p == 0.0 for m in student.modules() if isinstance(m, torch.nn.Dropout))
    assert not student.encoder.embeddings.word_embeddings.weight.requires_grad
    before = evaluate(student, data.x_test, teacher=teacher, task="embedding", collate=config.collate)
    result = distill(student=student, teacher=teacher, data=data, config=config, out_dir=tmp_path, progress=False)
    after = evaluate(result.model, data.x_test, teacher=teacher, task="embedding", collate=config.collate)
    assert after["spearman"] > before["spearman"] + 0.1
    assert after["cosine_to_teacher"] > before["cosine_to_teacher"]
    torch.testing.assert_close(result.model.encoder.embeddings.word_embeddings.weight,
                               teacher.encoder.embeddings.word_embeddings.weight)  # frozen: still the teacher's
    labels = set(result.history[0]["terms"])
    assert {"cosine", "mse:encoder.encoder.layer.1->encoder.encoder.layer.3",
            "attention:encoder.encoder.layer.1.attention.self#1->encoder.encoder.layer.3.attention.self#1"} <= labels


def test_mix_text_makes_new_texts_from_the_corpus_words():
    from edgekd.hf import mix_text

    texts = np.array(SENTENCES)
    mixed = mix_text(texts, np.random.default_rng(0))
    assert mixed.shape == texts.shape and (mixed != texts).sum() >= len(texts) // 2
    vocabulary = set(" ".join(SENTENCES).split())
    assert all(set(t.split()) <= vocabulary and t for t in mixed)
    assert max(len(t) for t in mixed) > max(len(t) for t in texts) or any(t not in " ".join(texts) for t in mixed)
    np.testing.assert_array_equal(mixed, mix_text(texts, np.random.default_rng(0)))  # reproducible per seed


def test_export_parity_with_dynamic_sequence_length_and_optimum_layout(tiny, tmp_path):
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    from edgekd.hf import export_encoder, write_optimum_layout

    encoder, tokenizer = tiny
    texts = _toy_corpus(30, seed=1)
    result = export_encoder(model=encoder, tokenizer=tokenizer, texts=texts, out_dir=tmp_path / "export",
                            formats=("onnx", "openvino"))
    assert result.gate_passed and result.parity["onnx"]["cosine"] > 0.9999 and result.parity["openvino"]["cosine"] > 0.9999
    assert not encoder.training  # exporting must not switch the model's dropout on
    layout = write_optimum_layout(out_dir=tmp_path / "optimum", encoder=encoder, tokenizer=tokenizer,
                                  onnx_path=result.onnx, openvino_xml=result.openvino_xml)
    for name in ("model.onnx", "openvino_model.xml", "openvino_model.bin", "config.json", "modules.json",
                 "1_Pooling/config.json", "tokenizer_config.json"):
        assert (layout / name).is_file(), name
    assert AutoConfig.from_pretrained(layout).num_hidden_layers == 4
    reloaded = AutoTokenizer.from_pretrained(layout)
    session = ort.InferenceSession(str(layout / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding", "last_hidden_state"]
    for batch in (texts[:1], texts[3:8]):  # batch and sequence length differ from the example inputs
        ids, mask = encode_batch(tokenizer=reloaded, texts=batch)
        sentence, tokens = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            want_tokens, want_sentence = encoder.features(ids, mask)
        assert tokens.shape == tuple(want_tokens.shape)
        np.testing.assert_allclose(sentence, want_sentence.numpy(), atol=1e-4)


def test_layer_student_reloads_from_a_checkpoint(tiny, tmp_path):
    from edgekd.checkpoint import load_checkpoint, save_checkpoint
    from edgekd.hf import model_ref

    teacher, tokenizer = tiny
    cut = layer_student(teacher=teacher, num_layers=3)
    with torch.no_grad():
        cut.model.encoder.encoder.layer[2].output.dense.bias.fill_(0.5)  # trained weights, not the teacher's
    path = save_checkpoint(tmp_path / "student.pt", cut.model, ref=model_ref(teacher), transforms=[cut.transform])
    reloaded = load_checkpoint(path).model
    ids = TextCollate(tokenizer=tokenizer)(_toy_corpus(4))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), cut.model(ids))
    assert reloaded.config.num_hidden_layers == 3


def test_prune_student_removes_heads_and_ffn_neurons(tiny):
    from edgekd.hf import make_student

    teacher, tokenizer = tiny
    ids, mask = encode_batch(tokenizer=tokenizer, texts=SENTENCES[:3])
    pruned = make_student(teacher=teacher, spec="prune:0.5", example_inputs=(ids, mask), channel_multiple=8).model
    block = pruned.encoder.encoder.layer[0]
    assert block.intermediate.dense.out_features == 32 and block.attention.self.num_attention_heads == 2
    assert teacher.encoder.encoder.layer[0].intermediate.dense.out_features == 64  # the teacher is untouched
    with torch.no_grad():
        assert pruned(ids, mask).shape == (3, 32)
    assert make_student(teacher=teacher, spec="layers:2").model.config.num_hidden_layers == 2
    for bad in ("layers:x", "prune:half", "depth:3"):
        with pytest.raises(BadInput):
            make_student(teacher=teacher, spec=bad, example_inputs=(ids, mask))


def test_embedding_metric_compares_similarity_structure_at_any_width():
    from edgekd.distill import METRICS

    rng = np.random.default_rng(0)
    teacher = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32))
    wide = torch.cat([teacher, teacher], dim=1)  # same cosines, twice the width
    metric = METRICS["embedding"]
    assert metric.primary == "spearman"
    result = metric.compute(wide, None, teacher)
    assert result["cosine_to_teacher"] is None and result["spearman"] == pytest.approx(1.0)
    assert result["recall_at_10"] == 1.0 and result["teacher_agreement"] == result["spearman"]
    assert metric.compute(teacher[:2], None, teacher[:2])["spearman"] is None  # too few texts to rank pairs


def test_cli_exports_a_text_encoder_checkpoint(tiny, tmp_path, run_cli):
    from edgekd.checkpoint import save_checkpoint
    from edgekd.hf import model_ref

    teacher, _ = tiny
    cut = layer_student(teacher=teacher, num_layers=2)
    checkpoint = save_checkpoint(tmp_path / "student.pt", cut.model, ref=model_ref(teacher), transforms=[cut.transform])
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(_toy_corpus(60)) + "\n")
    code, out, err = run_cli("export", str(checkpoint), "--out", str(tmp_path / "exp"), "--data", str(corpus),
                             "--format", "onnx", "--precision", "fp16")
    assert code == 0, err
    assert re.search(r"onnx: cosine (0\.999|1\.000)", out) and "(FP16)" in out
    evidence = json.loads((tmp_path / "exp" / "model.export.json").read_text())
    assert evidence["input_names"] == ["input_ids", "attention_mask"] and evidence["precision"] == "fp16"


def test_cli_distills_a_layers_student_from_a_hugging_face_teacher(tiny_dir, tmp_path, run_cli):
    from edgekd.checkpoint import load_checkpoint

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(_toy_corpus(80)) + "\n")
    code, out, err = run_cli("distill", "--teacher", str(tiny_dir), "--student", "layers:2", "--data", str(corpus),
                             "--epochs", "1", "--out", str(tmp_path / "kd"))
    assert code == 0, err
    student = load_checkpoint(tmp_path / "kd" / "student.pt").model
    assert student.config.num_hidden_layers == 2 and "spearman" in out
    code, _, err = run_cli("distill", "--teacher", str(tiny_dir), "--student", "layers:2", "--data", str(corpus),
                           "--no-kd", "--out", str(tmp_path / "none"))
    assert code == 2 and "no training signal" in err
