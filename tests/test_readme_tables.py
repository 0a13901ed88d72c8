"""README.md's benchmark figures are what benchmarks/results/*.json say (benchmarks/readme_tables.py
regenerates them in memory here): a figure typed by hand, or a results file rerun without
regenerating the README, fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import benchmark_script

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def tables():
    with benchmark_script("readme_tables") as module:
        yield module


def test_readme_says_what_the_results_files_say(tables):
    readme = README.read_text()
    for name, text in tables.blocks().items():
        assert f"<!-- results:{name} -->\n{text}\n<!-- /results:{name} -->" in readme, (
            f"README.md's '{name}' block disagrees with benchmarks/results/*.json: "
            "run .venv/bin/python benchmarks/readme_tables.py")
    assert tables.render(readme, tables.blocks()) == readme


def test_a_changed_figure_shows_with_its_provenance(tables, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(tables.RESULTS, results)
    prune = json.loads((results / "prune_cnn.json").read_text())
    prune["results"][0]["main"]["ort_latency_ms"]["teacher"]["p50"] = 1.2
    prune["host"] = "x86_64 AMD EPYC [avx2 fma avx512f avx512_vnni]"
    (results / "prune_cnn.json").write_text(json.dumps(prune))
    quant = json.loads((results / "quant_cnn_digits32.json").read_text())
    for entry in quant["targets"].values():
        entry["qat_kept_calibrated_start"] = False
    (results / "quant_cnn_digits32.json").write_text(json.dumps(quant))

    table = tables.blocks(results)["benchmarks"]
    assert tables.render(README.read_text(), tables.blocks(results)) != README.read_text()
    prune_row = next(line for line in table.splitlines() if line.startswith("| Pruning"))
    student = tables._ms(prune["results"][0]["main"]["ort_latency_ms"]["pruned"]["p50"])
    assert f"ORT p50 1.20 -> {student} ms" in prune_row and prune_row.endswith("[avx2 fma avx512f avx512_vnni] |")
    assert "QAT+KD beat its calibrated (PTQ) start" in table and "predates" not in table
    minilm_row = next(line for line in table.splitlines() if line.startswith("| all-MiniLM"))
    assert 'students **given** (`trained: "given"`)' in minilm_row and "--qat-checkpoint" in minilm_row


def test_the_statistic_is_named_and_a_best_case_labelled(tables):
    table = tables.blocks()["benchmarks"]
    distill = next(line for line in table.splitlines() if line.startswith("| KD with"))
    median = json.loads((tables.RESULTS / "distill_digits_unlabeled.json").read_text())["timing"]
    assert f"**{median['median_ratio_cached_vs_ce']:.2f}x** a plain CE step" in distill
    assert f"best case (fastest epochs): {median['ratio_cached_vs_ce']:.2f}x" in distill
    assert "host not recorded" in tables.host({"host": "x86_64"}) and tables.host({}) == "host not recorded"


def test_the_readme_must_mark_every_block_once(tables):
    with pytest.raises(SystemExit, match="peers"):
        tables.render("<!-- results:benchmarks -->\n<!-- /results:benchmarks -->\n", tables.blocks())


def test_a_runtime_that_deploys_the_fp32_student_says_so(tables, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(tables.RESULTS, results)
    peers = json.loads((results / "peers.json").read_text())
    workload = next(w for w in peers["workloads"].values() if w["status"] == "measured")
    workload["deployed"] = {"onnxruntime": "student-kd-fp32", "openvino": "student-kd-qat-int8"}
    (results / "peers.json").write_text(json.dumps(peers))
    summary = " ".join(tables.blocks(results)["peers-summary"].split())
    assert "ONNX Runtime: " in summary and "deploys student-kd-fp32 here" in summary
