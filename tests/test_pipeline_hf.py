"""`edgekd compress` end to end on a tiny random BERT sentence encoder (a local Hugging Face directory)
and a text file: the five-variant ablation is measured by agreement with the teacher's embeddings."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_hf import SENTENCES, write_sentence_model
from test_pipeline import VARIANTS, cli


def write_corpus(path: Path, lines: int = 240, seed: int = 0) -> Path:
    """One text per line: random re-mixes of the tokenizer's sentences, 3 to 13 words each."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    path.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(3, 14))) for _ in range(lines)) + "\n")
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-run")
    teacher = write_sentence_model(root / "teacher", layers=2)
    corpus = write_corpus(root / "corpus.txt")
    out = root / "minilm"
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "formats": ["onnx"],  # OpenVINO conversion adds ~40 s on 2 cores; export is tested in test_hf
        "distill": {"epochs": 1, "batch_size": 32}, "quant": {"epochs": 1, "calibration_samples": 64},
        "bench": {"time_budget_s": 0.1, "ablation_time_budget_s": 0.05, "min_iterations": 10, "warmup": 1}}))
    done = cli("compress", str(recipe), "--teacher", str(teacher), "--student", "layers:1", "--data", str(corpus),
               "--target", "x86-cpu-onnxruntime", "--target", "nvidia-gpu-onnxruntime-cuda", "--out", str(out),
               timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_text_run_reports_embedding_agreement_for_every_variant(text_run):
    out = text_run
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "embedding" and report["audit"] is None
    rows = {row["variant"]: row for row in report["ablation"]}
    assert set(rows) == VARIANTS
    (fp16,) = report["deployables"]  # the GPU target deploys the KD student in FP16
    assert fp16["variant"] == "student-kd-fp16"
    assert fp16["metric"]["value"] == pytest.approx(rows["student-kd-fp32"]["metric"]["value"], abs=0.01)
    for row in rows.values():
        assert row["metric"]["name"] == "spearman_vs_teacher"
        assert -1.0 <= row["metric"]["value"] <= 1.0 and 0.0 <= row["metric"]["recall_at_10"] <= 1.0
        assert row["latency_p50_ms"]["x86-cpu-onnxruntime"] > 0
    assert rows["teacher-fp32"]["metric"]["value"] == pytest.approx(1.0)  # the teacher against itself
    assert rows["student-kd-fp32"]["params"] < rows["teacher-fp32"]["params"]
    assert report["parity"]["onnx"]["cosine"] > 0.99


@pytest.mark.slow
def test_text_run_writes_the_deployable_and_its_optimum_layout(text_run):
    import onnxruntime as ort

    out = text_run
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    for name in ("model.onnx", "config.json", "modules.json", "1_Pooling/config.json", "tokenizer_config.json"):
        assert (out / "hf" / name).is_file(), name
    assert json.loads((out / "hf" / "config.json").read_text())["num_hidden_layers"] == 1
    for name in ("model.onnx", "config.json", "tokenizer_config.json"):  # the FP16 deployable's folder too
        assert (out / "variants" / "student-kd-fp16" / "hf" / name).is_file(), name
