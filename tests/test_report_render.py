"""render_report on synthetic report.json files: outputs, self-contained HTML, verdicts, bad input."""

import base64
import copy
import json
import re
import shutil

import numpy as np
import pytest

from edgekd.errors import BadInput
from edgekd.report import audit, build_manifest, check_run, render_report, write_manifest
from edgekd.report.plots import pareto_front

X86 = "x86-cpu-openvino"
NPU = "intel-npu-core-ultra"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VARIANTS = [  # variant, precision, accuracy, params, size MB, p50 ms
    ("teacher-fp32", "fp32", 0.987, 271_114, 1.05, 0.61),
    ("teacher-int8-ptq", "int8", 0.962, 271_114, 0.31, 0.29),
    ("student-no-kd", "fp32", 0.951, 68_010, 0.27, 0.22),
    ("student-kd-fp32", "fp32", 0.979, 68_010, 0.27, 0.21),
    ("student-kd-qat-int8", "int8", 0.975, 68_010, 0.09, 0.12),
]


def synthetic_report(*, latency_ok: bool = False) -> dict:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12)
    teacher = np.where(rng.random(y.size) < 0.97, y, (y + 1) % 10)
    student = np.where(rng.random(y.size) < 0.93, teacher, (teacher + 3) % 10)
    layers = [{"name": f"features.{i}.conv", "op": "Convolution", "time_ms": t, "share": t / 0.5}
              for i, t in enumerate([0.16, 0.09, 0.07, 0.05, 0.04, 0.03, 0.02, 0.015, 0.01, 0.008, 0.006, 0.004, 0.002])]
    p95 = 0.8 if latency_ok else 1.3
    return {
        "edgekd_version": "0.1.0", "created": "2026-11-23T04:00:00Z", "task": "classification",
        "run": {"teacher": "edgekd.zoo:digits_teacher", "student": "prune:0.5", "data": "digits", "targets": [X86, NPU]},
        "ablation": [{"variant": v, "metric": {"name": "accuracy", "value": acc}, "params": params, "size_mb": size,
                      "precision": precision, "artifact": f"variants/{v}.onnx",
                      "latency_p50_ms": {X86: p50}, "latency_p95_ms": {X86: p50 * 1.3}}
                     for v, precision, acc, params, size, p50 in VARIANTS],
        "targets": [
            {"name": X86, "available": True, "reason": None, "estimated": False,
             "latency_ms": {"p50": 0.12, "p90": 0.5, "p95": p95, "p99": 1.6, "mean": 0.2, "std": 0.05},
             "throughput_per_s": 8123.4, "peak_memory_mb": 41.5, "model_size_mb": 0.09,
             "executed_precision": "int8", "int8_executed": True, "layers": layers, "warnings": ["noisy host"],
             "slo": {"verdict": "pass" if latency_ok else "fail", "checks": [
                 {"key": "latency_p95_ms", "limit": 1.0, "value": p95, "ok": latency_ok},
                 {"key": "peak_memory_mb", "limit": 200, "value": 41.5, "ok": True},
                 {"key": "model_size_mb", "limit": 10, "value": 0.09, "ok": True},
                 {"key": "min_metric_retention", "limit": 0.98, "value": 0.9878, "ok": True}]}},
            {"name": NPU, "available": False, "reason": "OpenVINO device NPU is not present", "estimated": False,
             "slo": {"verdict": "not-measured", "checks": []}, "estimate": {"latency_ms": 0.05, "estimated": True}},
        ],
        "parity": {"onnx": {"top1_agreement": 1.0, "max_abs_diff": 2.1e-6, "cosine": 1.0},
                   "openvino": {"top1_agreement": 0.995, "max_abs_diff": 0.031, "cosine": 0.9998}},
        "retention": 0.9878, "speedup_vs_teacher": {X86: 5.08},
        "training": {v: [{"epoch": e, "train_loss": 1.6 / (e + 1) + k * 0.1, "val_loss": 1.7 / (e + 1) + k * 0.1,
                          "val_metric": 0.97 - 0.3 / (e + 1) - k * 0.01} for e in range(6)]
                     for k, v in enumerate(["student-no-kd", "student-kd-fp32", "student-kd-qat-int8"])},
        "audit": audit(y_true=y, teacher_pred=teacher, student_pred=student,
                       class_names=[f"digit {i}" for i in range(10)]),
        "quantization": {"scheme": {"weights": {"dtype": "int8", "symmetric": True, "per_channel": True},
                                    "activations": {"dtype": "uint8", "symmetric": False}},
                         "float_layers": [{"name": "classifier", "reason": "last layer: accuracy-sensitive"}]},
        "prune": {"ratio": 0.5, "params_before": 271_114, "params_after": 68_010,
                  "layers": [{"name": "features.0.conv", "channels_before": 32, "channels_after": 16}]},
        "host": {"arch": "x86_64", "cpu": "Intel(R) Xeon(R) test", "isa": ["avx2", "fma"], "cores": 2},
    }


def _write(run_dir, report):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report))
    return run_dir


def test_pareto_front_keeps_only_undominated_points_by_latency():
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (0.5, 0.80), (2.0, 0.90)]
    assert pareto_front(points) == [3, 0, 1]


def test_render_writes_markdown_html_and_plots(tmp_path):
    written = render_report(run_dir=_write(tmp_path / "run", synthetic_report()))
    expected = {"report.md", "report.html", f"plots/pareto_{X86}.png", "plots/layers.png", "plots/training.png",
                "plots/per_class.png"}
    assert set(written) == expected
    for relative in expected:
        assert (tmp_path / "run" / relative).is_file()
        if relative.endswith(".png"):
            assert (tmp_path / "run" / relative).read_bytes().startswith(PNG_MAGIC)
    # No Pareto plot for the absent NPU: it has no measured latency.
    assert not (tmp_path / "run" / "plots" / f"pareto_{NPU}.png").exists()


def test_html_is_self_contained_with_every_plot_inlined(tmp_path):
    run_dir = _write(tmp_path / "run", synthetic_report())
    render_report(run_dir=run_dir)
    page = (run_dir / "report.html").read_text()
    inlined = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(inlined) == 4
    assert base64.b64decode(inlined[0]) == (run_dir / "plots" / f"pareto_{X86}.png").read_bytes()
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external image, stylesheet or script
    assert "<script" not in page and "<link" not in page


def test_markdown_has_ablation_rows_verdicts_and_failure_explained(tmp_path):
    run_dir = _write(tmp_path / "run", synthetic_report())
    render_report(run_dir=run_dir)
    md = (run_dir / "report.md").read_text()
    for variant, precision, acc, params, size, p50 in VARIANTS:
        assert f"| {variant} | {precision} | {acc:.4f} | {params:,} | {size:.3g} | {p50:.3g} |" in md
    assert "does NOT meet every SLO" in md and "1 of 1 measured target(s) fail" in md
    assert f"### {X86}: fail" in md and f"### {NPU}: not-measured" in md
    assert "OpenVINO device NPU is not present" in md
    assert "| latency_p95_ms | 1.00 | 1.30 | over by 0.3 ms (30%) | FAIL |" in md
    assert "Time goes to: features.0.conv [Convolution] 0.16 ms (32.0%)" in md
    assert "98.8% of the FP32 teacher's accuracy" in md and "5.08x on x86-cpu-openvino" in md
    assert "| classifier | last layer: accuracy-sensitive |" in md
    assert "| onnx | 1 | 2.1e-06 | 1 |" in md and "| openvino | 0.995 | 0.031 | 0.9998 |" in md
    assert "ISA: avx2 fma" in md
    # The most regressed class of the audit is named in the audit section.
    worst = synthetic_report()["audit"]["regressed"][0]
    assert f"{worst['name']} ({worst['delta']:+.1%})" in md


def test_targets_deploying_different_students_are_named_as_such(tmp_path):
    report = synthetic_report(latency_ok=True)
    report["targets"][0]["variant"] = "student-kd-qat-int8"
    other = {**report["targets"][0], "name": "x86-cpu-per-tensor", "variant": "student-kd-qat-int8-x86-cpu-per-tensor"}
    report["targets"].append(other)
    run_dir = _write(tmp_path / "run", report)
    render_report(run_dir=run_dir)
    md = (run_dir / "report.md").read_text()
    assert ("The deployed students (student-kd-qat-int8: INT8; student-kd-qat-int8-x86-cpu-per-tensor) meet every "
            "SLO on all 2 measured target(s)") in md  # a student without a row is named, not described
    assert "student-kd-qat-int8 keeps 98.8% of the FP32 teacher's accuracy" in md
    assert "| x86-cpu-per-tensor | student-kd-qat-int8-x86-cpu-per-tensor | yes |" in md  # the "deploys" column


def test_a_run_whose_targets_all_deploy_the_fp16_student_names_it(tmp_path):
    report = synthetic_report(latency_ok=True)
    for target in report["targets"]:
        target["variant"] = "student-kd-fp16"
    run_dir = _write(tmp_path / "run", report)
    render_report(run_dir=run_dir)
    md = (run_dir / "report.md").read_text()
    assert "The deployed student (student-kd-fp16) meets every SLO" in md and "The INT8 student" not in md


def test_headline_says_pass_when_every_measured_target_passes(tmp_path):
    run_dir = _write(tmp_path / "run", synthetic_report(latency_ok=True))
    render_report(run_dir=run_dir)
    md = (run_dir / "report.md").read_text()
    assert f"meets every SLO on all 1 measured target(s) ({X86})" in md
    assert "No SLO check failed on a measured target." in md


def test_contract_minimum_renders_and_derives_retention_and_speedup(tmp_path):
    full = synthetic_report()
    minimal = {"ablation": full["ablation"], "targets": [{k: v for k, v in t.items() if k not in ("layers",)}
                                                           for t in full["targets"]], "parity": full["parity"]}
    written = render_report(run_dir=_write(tmp_path / "run", minimal))
    assert set(written) == {"report.md", "report.html", f"plots/pareto_{X86}.png"}
    md = (tmp_path / "run" / "report.md").read_text()
    assert f"{0.975 / 0.987:.1%} of the FP32 teacher's accuracy" in md
    assert f"{0.61 / 0.12:.2f}x on {X86}" in md
    assert "No manifest.json in this run directory." in md


def test_rerender_on_a_copy_is_byte_identical_and_keeps_the_run_checkable(tmp_path):
    run_dir = _write(tmp_path / "run", synthetic_report())
    (run_dir / "model.onnx").write_bytes(b"onnx bytes")
    manifest = build_manifest(run_dir=run_dir, teacher={"ref": "t", "sha256": "a" * 64},
                              data={"name": "digits", "sha256": "b" * 64, "provenance": {}},
                              recipe={}, hyperparameters={}, seed=0)
    write_manifest(run_dir=run_dir, manifest=manifest)
    first = render_report(run_dir=run_dir)
    copy_dir = tmp_path / "elsewhere"
    shutil.copytree(run_dir, copy_dir, ignore=shutil.ignore_patterns("plots", "report.md", "report.html"))
    second = render_report(run_dir=copy_dir)
    assert set(first) == set(second)
    for relative in first:
        assert (run_dir / relative).read_bytes() == (copy_dir / relative).read_bytes(), relative
    assert "2 artifacts hashed: model.onnx, report.json" in (copy_dir / "report.md").read_text()
    assert check_run(run_dir=copy_dir).status == "ok"


def test_missing_report_json_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="report.json: not found"):
        render_report(run_dir=tmp_path)


def test_broken_json_is_bad_input(tmp_path):
    (tmp_path / "report.json").write_text('{"ablation": [')
    with pytest.raises(BadInput, match="report.json: not valid JSON"):
        render_report(run_dir=tmp_path)


@pytest.mark.parametrize("breakage, key", [
    (lambda r: r.pop("parity"), "'parity' is missing"),
    (lambda r: r["targets"][0]["slo"].pop("verdict"), "'targets[0].slo.verdict' is missing"),
    (lambda r: r["ablation"][2]["metric"].update(value="high"), "'ablation[2].metric.value' must be"),
    (lambda r: r["targets"][1].update(available="no"), "'targets[1].available' must be bool"),
    (lambda r: r.update(audit={"per_class": 3}), "key 'audit' is malformed"),
])
def test_invalid_report_names_the_key(tmp_path, breakage, key):
    report = copy.deepcopy(synthetic_report())
    breakage(report)
    with pytest.raises(BadInput, match=re.escape(key)):
        render_report(run_dir=_write(tmp_path / "run", report))
    assert not (tmp_path / "run" / "report.md").exists()  # nothing half-rendered


def test_empty_run_renders_text_only_and_gives_no_verdict(tmp_path):
    report = {"ablation": [], "targets": [], "parity": {}, "training": {"student-kd-fp32": [{"epoch": 0}]}}
    written = render_report(run_dir=_write(tmp_path / "run", report))
    assert set(written) == {"report.md", "report.html"}  # nothing numeric to plot
    md = (tmp_path / "run" / "report.md").read_text()
    assert "not measured on any target here, so no SLO verdict is given" in md
    assert "meets every SLO" not in md
