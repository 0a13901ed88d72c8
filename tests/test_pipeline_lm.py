"""`edgekd compress` end to end on a tiny random Llama-style causal LM (a local Hugging Face folder) and a
text file: every stage of the causal-LM family, the five variants scored as exported decoders, generation
timed on ONNX Runtime, speculative decoding, resume, and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import VARIANTS, cli

from edgekd.lm.tiny import write_tiny_causal_lm

WORDS = ("the cat sat on a mat while small dogs ran after red balls in the green park and old men read "
         "long books about ships that sail far seas").split()


def write_corpus(path: Path, lines: int = 300, seed: int = 0) -> Path:
    """One text per line, 4 to 14 words: repetitive enough that a few steps of training lower the loss."""
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 15))) for _ in range(lines)) + "\n")
    return path


def trained_teacher(root: Path, corpus: Path, *, layers: int = 4) -> Path:
    """The tiny Llama trained briefly on the corpus, so it has something to teach: a random one predicts near
    uniform distributions whose argmax any rounding flips."""
    from edgekd.lm.data import token_windows
    from edgekd.lm.model import load_causal_lm, save_causal_lm
    from edgekd.lm.train import LMTrainConfig, train_lm

    folder = write_tiny_causal_lm(root / "teacher", layers=layers)
    model = load_causal_lm(folder)
    windows = token_windows(model.tokenizer(), corpus.read_text().splitlines(), seq_len=32, max_tokens=6000)
    train_lm(model, windows, config=LMTrainConfig(max_steps=60, batch_size=8, lr=3e-3, warmup_steps=5),
             out_dir=root / "teacher-training")
    save_causal_lm(model, folder)
    return folder


def recipe(root: Path, **extra) -> Path:
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "formats": ["onnx"],  # OpenVINO for LMs is covered in test_lm_export
        "distill": {"max_steps": 12, "batch_size": 4, "lr": 3e-3},
        "quant": {"max_steps": 4, "weight_bits": 8},
        "lm": {"seq_len": 32, "train_tokens": 4000, "eval_windows": 4, "parity_prompts": 3, "speculative_k": 3,
               "sequence_kd_prompts": 6, "sequence_kd_new_tokens": 8},
        "slo": {"*": {"latency_p95_ms": None, "peak_memory_mb": 2000, "model_size_mb": None,
                      "min_metric_retention": 0.01, "decode_tokens_per_s_min": 1.0}},
        **extra}))
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-run")
    corpus = write_corpus(root / "corpus.txt")
    teacher = trained_teacher(root, corpus)
    out = root / "run"
    args = ("compress", str(recipe(root)), "--teacher", str(teacher), "--student", "layers:2", "--data", str(corpus),
            "--target", "x86-cpu-onnxruntime", "--target", "intel-npu-core-ultra", "--out", str(out))
    env = {"XDG_CACHE_HOME": str(root / "cache")}  # the teacher's top-k logits and generations are cached there
    done = cli(*args, env_extra=env, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out, args, env


@pytest.mark.slow
def test_lm_run_reports_every_variant_and_generation(lm_run):
    out, _, env = lm_run
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "causal-lm"
    rows = {row["variant"]: row for row in report["ablation"]}
    assert set(rows) == VARIANTS
    assert rows["teacher-fp32"]["metric"]["value"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["metric"]["name"] == "top1_agreement_vs_teacher"
        assert row["metric"]["perplexity"] > 1
    assert rows["student-kd-qat-int8"]["precision"] == "weight-int8"
    assert rows["student-kd-qat-int8"]["params"] < rows["teacher-fp32"]["params"]
    cpu, npu = report["targets"]
    assert npu["available"] is False and npu["slo"]["verdict"] == "not-measured"
    gen = cpu["generation"]
    assert gen["ttft_ms"]["p50"] <= gen["ttft_ms"]["p95"] and gen["decode_tokens_per_s"] > 0
    checks = {c["key"]: c for c in cpu["slo"]["checks"]}
    assert set(checks) == {"decode_tokens_per_s_min", "min_metric_retention", "peak_memory_mb"}
    assert checks["min_metric_retention"]["value"] == rows["student-kd-qat-int8"]["metric"]["value"]
    assert 0 < checks["peak_memory_mb"]["value"] < 2000  # the deployable loaded and prefilling, in a child process
    assert (out / "model.onnx").is_file()  # the run root holds what the targets deploy
    spec = report["speculative"]
    assert spec["identical_output"] is True and 0 <= spec["acceptance_rate"] <= 1
    assert report["parity"]["onnx"]["greedy_token_match"] >= 0.95
    assert (out / "report.md").is_file() and (out / "manifest.json").is_file()
    assert report["training"]["student-kd-fp32"] and report["quantization"]["bits"] == 8
    audit = report["generation_audit"]
    assert set(audit) == {"teacher-fp32", "student-kd-qat-int8"} and audit["teacher-fp32"]["outputs"] == 3
    cache = Path(env["XDG_CACHE_HOME"]) / "edgekd" / "teacher_cache"
    assert any((cache / "lm_topk").iterdir()) and any((cache / "lm_generations").iterdir())
    # every projection of the 2 student layers, and the head tied to the embedding (one INT8 matrix for both)
    assert (cpu["weights_in_runtime"]["int8"], cpu["weights_in_runtime"]["float"]) == (2 * 7 + 1, 0)


@pytest.mark.slow
def test_lm_kd_student_agrees_with_the_teacher_more_than_the_no_kd_one(lm_run):
    out, _, _ = lm_run
    rows = {row["variant"]: row for row in json.loads((out / "report.json").read_text())["ablation"]}
    assert rows["student-kd-fp32"]["metric"]["value"] > rows["student-no-kd"]["metric"]["value"]


@pytest.mark.slow
def test_lm_run_resumes_without_redoing_work(lm_run):
    out, args, env = lm_run
    before = json.loads((out / "report.json").read_text())
    done = cli(*args, "--resume", env_extra=env, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    after = json.loads((out / "report.json").read_text())
    assert [r["metric"] for r in after["ablation"]] == [r["metric"] for r in before["ablation"]]


@pytest.mark.parametrize("student, extra, message", [
    ("layers:9", {}, "layers:9"),
    ("auto", {}, "auto"),
    ("layers:1", {"lm": {"seq_len": 1024}}, "exceeds the teacher's context"),  # the tiny teacher has 512
    ("layers:1", {"quant": {"weight_bits": 4, "group_size": 128}}, "group_size"),  # hidden 64: before any training
])
def test_lm_mistakes_are_exit_2_before_training(run_cli, monkeypatch, tmp_path, student, extra, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    teacher = write_tiny_causal_lm(tmp_path / "teacher", layers=2)
    corpus = write_corpus(tmp_path / "corpus.txt", lines=120)
    code, _, err = run_cli("compress", str(recipe(tmp_path, **extra)), "--teacher", str(teacher), "--student",
                           student, "--data", str(corpus), "--target", "x86-cpu-onnxruntime", "--out",
                           str(tmp_path / "run"))
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_lm_teacher_on_image_data_is_exit_2(run_cli, tmp_path):
    teacher = write_tiny_causal_lm(tmp_path / "teacher", layers=2)
    code, _, err = run_cli("compress", "--teacher", str(teacher), "--data", "digits16", "--target",
                           "x86-cpu-onnxruntime", "--out", str(tmp_path / "run"))
    assert code == 2, err[-2000:]
    assert "not text" in err
