"""A baseline's export-gate failure is its ablation row's, never the run's; the deployable's own stops the run.

One tiny run (digits CNN, both x86 targets) whose OpenVINO runtime is made to disagree on the
teacher-int8-ptq IR (the failure seen on the real all-MiniLM-L6-v2); copies of it then resume, once as
recorded and once with the deployable's OpenVINO IR disagreeing instead. And the fix of that baseline
itself: SmoothQuant before the PTQ of a transformer teacher (edgekd.quant.prepare.smooth).
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from torch import nn

from edgekd.export import exporter
from edgekd.report.schema import DEPLOYABLE, TEACHER_INT8
from edgekd.targets import load_target

TARGETS = ["x86-cpu-openvino", "x86-cpu-onnxruntime"]


def recipe_for(out: Path) -> dict:
    return {"teacher": "tiny_models:trained_teacher", "student": "prune:0.5", "data": "digits", "targets": TARGETS,
            "out": str(out), "distill": {"epochs": 1, "batch_size": 64},
            "quant": {"epochs": 1, "latency_aware": False, "calibration_samples": 128},
            "bench": {"time_budget_s": 0.1, "ablation_time_budget_s": 0.05, "min_iterations": 10, "warmup": 1}}


def skew_openvino(monkeypatch, variant: str) -> None:
    """OpenVINO computes `variant`'s IR differently in the export gate: its outputs move by half their mean
    magnitude (a deterministic pattern), far past the gate's cosine bar."""
    real = exporter.cpu_session

    def session(path, **kwargs):
        opened = real(path, **kwargs)
        if Path(path).suffix == ".xml" and f"/{variant}/" in Path(path).as_posix():
            run = opened.run
            opened.run = lambda feeds: [o + 0.5 * np.abs(o).mean() * np.sin(np.arange(o.size)).reshape(o.shape)
                                        for o in run(feeds)]
        return opened

    monkeypatch.setattr(exporter, "cpu_session", session)


def compress(out: Path, *, resume: bool = False):
    from edgekd.pipeline import compress as run_compress
    from edgekd.recipe import Recipe

    log = io.StringIO()
    result = run_compress(recipe=Recipe(**recipe_for(out)), resume=resume, console=Console(file=log, width=200))
    return result, log.getvalue()


@pytest.fixture(scope="module")
def failed_baseline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        skew_openvino(monkeypatch, TEACHER_INT8)
        result, log = compress(out)
    return out, result, log


def rows_of(report: dict) -> dict:
    return {row["variant"]: row for row in report["ablation"]}


def test_a_baselines_gate_failure_is_its_row_and_the_run_goes_on(failed_baseline_run):
    out, result, log = failed_baseline_run
    report = json.loads((out / "report.json").read_text())
    assert result.exit_code == (1 if any(t["slo"]["verdict"] == "fail" for t in report["targets"]) else 0)
    assert f"{TEACHER_INT8}: openvino rejected by the export gate (top-1 agreement" in log
    row = rows_of(report)[TEACHER_INT8]
    assert row["verdict"] == "failed" and set(row["rejected"]) == {"openvino"}
    assert row["reason"].startswith("openvino rejected by the export gate: top-1 agreement 0.")  # format, check, figure
    assert ", output cosine 0." in row["reason"] and "< 0.999" in row["reason"]  # and the limit
    assert row["reason"].endswith("(not timed on x86-cpu-openvino)")
    assert set(row["latency_p50_ms"]) == {"x86-cpu-onnxruntime"}  # its ONNX file still scored and timed
    assert row["metric"]["value"] is not None and row["artifact"] == f"variants/{TEACHER_INT8}/model.onnx"
    variant = out / "variants" / TEACHER_INT8
    assert not (variant / "openvino").exists() and (variant / "model.onnx").is_file()
    gate = json.loads((variant / "rejected" / "model" / "gate.json").read_text())
    assert gate["gate"] == "partial" and set(gate["rejected"]) == {"openvino"}
    assert json.loads((variant / "model.export.json").read_text())["rejected"] == gate["rejected"]
    for name, other in rows_of(report).items():  # every other row measured as usual
        if name != TEACHER_INT8:
            assert "verdict" not in other and set(other["latency_p50_ms"]) == set(TARGETS)
    assert {t["name"] for t in report["targets"]} == set(TARGETS) and (out / "model.onnx").is_file()
    markdown = (out / "report.md").read_text()
    assert f"{TEACHER_INT8} (gate failed)" in markdown and row["reason"] in markdown


def test_resume_keeps_the_recorded_baseline_failure(failed_baseline_run, tmp_path):
    out, first, _ = failed_baseline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result, _ = compress(copy, resume=True)  # no skew now: a re-export would pass, the record is what counts
    row = rows_of(result.report)[TEACHER_INT8]
    assert row["reason"] == rows_of(first.report)[TEACHER_INT8]["reason"]
    assert set(row["latency_p50_ms"]) == {"x86-cpu-onnxruntime"}


def test_the_deployables_gate_failure_stops_the_run_and_ships_nothing(failed_baseline_run, tmp_path, monkeypatch,
                                                                        run_cli):
    out, _, _ = failed_baseline_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    state = json.loads((copy / "state.json").read_text())
    del state["stages"][f"export:{DEPLOYABLE}"]  # as if interrupted before the deployable's export
    (copy / "state.json").write_text(json.dumps(state))
    for shipped in ("model.onnx", "openvino", "report.json", "report.md", "report.html", "manifest.json", "plots"):
        path = copy / shipped
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(copy)))
    skew_openvino(monkeypatch, DEPLOYABLE)
    code, _, err = run_cli("compress", str(recipe), "--resume")
    assert code == 1 and "export gate failed for" in err and "openvino: output cosine" in err
    assert not any((copy / name).exists() for name in ("model.onnx", "openvino", "report.json", "manifest.json"))
    deployable = copy / "variants" / DEPLOYABLE
    assert not (deployable / "model.onnx").exists() and not (deployable / "openvino" / "model.xml").exists()
    assert json.loads((deployable / "rejected" / "model" / "gate.json").read_text())["gate"] == "failed"


def test_export_withholds_only_the_failing_format_of_a_model_it_need_not_ship(tmp_path, monkeypatch):
    from edgekd.errors import BadInput

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    skew_openvino(monkeypatch, "baseline")
    result = exporter.export(model=model, example_inputs=x[:2], parity_inputs=x, out_dir=tmp_path / "baseline",
                             required=())
    assert set(result.rejected) == {"openvino"} and "output cosine" in ", ".join(result.rejected["openvino"])
    assert result.onnx.is_file() and result.openvino_xml is None and not result.gate_passed
    with pytest.raises(BadInput, match="required formats must be among"):
        exporter.export(model=model, example_inputs=x[:2], out_dir=tmp_path / "other", formats=("onnx",),
                        required=("openvino",))


SCHEME = load_target("x86-cpu-openvino").quantization


def outlier_inputs(n: int = 256) -> torch.Tensor:
    """Inputs like a transformer's LayerNorm output: one channel ~40x the others."""
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    x[:, 5] *= 40
    return x


def test_smoothing_keeps_the_float_function_and_tames_an_outlier_channel():
    from edgekd.quant import TRANSFORMER_SMOOTH_ALPHA, prepare, quantize_ptq, smooth

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    x = outlier_inputs()
    with torch.no_grad():
        reference = model(x)
        prepared = prepare(model=model, scheme=SCHEME, weight_bits=8)  # quantizers off until calibrated
        assert smooth(model=prepared, inputs=[x], alpha=TRANSFORMER_SMOOTH_ALPHA) == 2
        torch.testing.assert_close(prepared(x), reference, rtol=1e-5, atol=1e-5)  # only the grids see a difference

        def error(alpha):
            quantized = quantize_ptq(model=model, scheme=SCHEME, calibration=x.numpy(), weight_bits=8,
                                     smooth_alpha=alpha)
            return float((quantized(x) - reference).norm() / reference.norm())

        plain, smoothed = error(None), error(TRANSFORMER_SMOOTH_ALPHA)
    assert smoothed < plain / 2, (plain, smoothed)


def test_a_smoothed_ptq_model_reloads_from_its_checkpoint(tmp_path):
    from edgekd.checkpoint import load_checkpoint, save_checkpoint
    from edgekd.models import ModelRef, resnet
    from edgekd.quant import QuantReport, checkpoint_transform, quantize_ptq

    model = resnet(width=8).eval()
    x = torch.rand(16, 1, 16, 16)
    quantized = quantize_ptq(model=model, scheme=SCHEME, calibration=x.numpy(), smooth_alpha=0.95)
    assert QuantReport.of(quantized).smooth_alpha == 0.95 and quantized.fc.smooth is not None
    path = save_checkpoint(tmp_path / "q.pt", quantized, ref=ModelRef("edgekd.models:resnet", {"width": 8}),
                           transforms=[checkpoint_transform(quantized)])
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model(x), quantized(x))


def test_smoothing_is_for_ptq_only():
    from edgekd.errors import BadInput
    from edgekd.quant import QuantConfig

    with pytest.raises(BadInput, match="smooth_alpha applies to PTQ"):
        QuantConfig(mode="qat", smooth_alpha=0.95).validated()
