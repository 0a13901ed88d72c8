"""The CLI's contract: exit codes 0/1/2, one-line errors without tracebacks, JSON outputs."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from edgekd.models import resnet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    model = resnet(width=4, blocks=(1, 1, 1)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return path


def write_target(tmp_path: Path, name="my-cpu", **slo) -> Path:
    data = yaml.safe_load((ROOT / "targets/x86-cpu-onnxruntime.yaml").read_text())
    data.update(name=name, slo=slo, precision="fp32")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_clean_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) <= 2, err
    for fragment in fragments:
        assert fragment in err.replace("\n", ""), err


def test_targets_json_lists_profiles_with_availability(run_cli):
    code, out, _ = run_cli("targets", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert {"name", "device", "runtime", "runtime_device", "precision", "available", "reason"} <= set(rows["x86-cpu-openvino"])
    assert rows["x86-cpu-onnxruntime"]["available"] is True
    assert rows["intel-npu-core-ultra"]["available"] is False and rows["intel-npu-core-ultra"]["reason"]
    assert rows["arm-cpu-onnxruntime"]["available"] is False and "aarch64" in rows["arm-cpu-onnxruntime"]["reason"]


def test_bench_passes_and_writes_contract_json(run_cli, tiny_onnx, tmp_path):
    target = write_target(tmp_path, latency_p95_ms=1000.0, model_size_mb=100.0)
    out_json = tmp_path / "bench.json"
    code, out, err = run_cli("bench", str(tiny_onnx), "--target", str(target), "--json", str(out_json),
                             "--time", "0.2", "--iterations", "20", "--warmup", "2", "--no-memory")
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["name"] == "my-cpu" and result["available"] is True
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
    assert result["slo"]["verdict"] == "pass"
    assert {c["key"] for c in result["slo"]["checks"]} >= {"latency_p95_ms", "model_size_mb"}


def test_bench_exits_1_when_an_slo_fails(run_cli, tiny_onnx, tmp_path):
    target = write_target(tmp_path, latency_p95_ms=0.000001)
    code, _, _ = run_cli("bench", str(tiny_onnx), "--target", str(target), "--time", "0.1", "--iterations", "10",
                         "--warmup", "1", "--no-memory")
    assert code == 1


def test_bench_on_absent_device_is_not_measured(run_cli, tiny_onnx, tmp_path):
    out_json = tmp_path / "npu.json"
    code, _, _ = run_cli("bench", str(tiny_onnx), "--target", "intel-npu-core-ultra", "--json", str(out_json),
                         "--no-memory")
    result = json.loads(out_json.read_text())
    assert code == 0
    assert result["available"] is False and result["reason"]
    assert result["slo"]["verdict"] == "not-measured"


@pytest.mark.parametrize("content, fragments", [
    ("name: broken\nslo: {latency_p95_ms: 5\n", ["broken YAML"]),
    (None, ["'colour'"]),
    ("string-for-number", ["'slo.latency_p95_ms'"]),
    ("negative-budget", ["'slo.peak_memory_mb'"]),
])
def test_malformed_target_exits_2(run_cli, tiny_onnx, tmp_path, content, fragments):
    data = yaml.safe_load((ROOT / "targets/x86-cpu-onnxruntime.yaml").read_text())
    data["name"] = "bad"
    if content is None:
        data["colour"] = "blue"
    elif content == "string-for-number":
        data["slo"]["latency_p95_ms"] = "fast"
    elif content == "negative-budget":
        data["slo"]["peak_memory_mb"] = -5
    path = tmp_path / "bad.yaml"
    path.write_text(content if content and content.startswith("name") else yaml.safe_dump(data))
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", str(path))
    assert_clean_error(code, err, "bad.yaml", *fragments)


def test_unknown_target_exits_2(run_cli, tiny_onnx):
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", "no-such-target")
    assert_clean_error(code, err, "unknown target 'no-such-target'")


def test_missing_and_corrupt_models_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("bench", str(tmp_path / "absent.onnx"), "--target", "x86-cpu-onnxruntime")
    assert_clean_error(code, err, "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00not an onnx model at all")
    code, _, err = run_cli("bench", str(corrupt), "--target", "x86-cpu-onnxruntime")
    assert_clean_error(code, err, "corrupt.onnx")


def test_debug_shows_the_traceback(run_cli):
    from edgekd.errors import BadInput

    with pytest.raises(BadInput):
        run_cli("--debug", "bench", "missing.onnx", "--target", "no-such-target")


def test_bad_dim_and_usage_errors_exit_2(run_cli, tiny_onnx):
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", "x86-cpu-onnxruntime", "--dim", "seq")
    assert_clean_error(code, err, "--dim 'seq'")
    code, _, _ = run_cli("no-such-command")
    assert code == 2


def test_compress_rejects_a_broken_recipe(run_cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher: edgekd.models:resnet\ndistill: {epochs: -3}\n")
    code, _, err = run_cli("compress", str(recipe), "--out", str(tmp_path / "run"))
    assert_clean_error(code, err, "recipe.yaml: distill", "'epochs'")
    recipe.write_text("teacher: [unclosed\n")
    code, _, err = run_cli("compress", str(recipe))
    assert_clean_error(code, err, "broken YAML")


def test_compress_rejects_bad_references(run_cli, tmp_path):
    code, _, err = run_cli("compress", "--teacher", "no_such_module_xyz:factory", "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "no_such_module_xyz")
    code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--data", "no-such-data",
                           "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "no-such-data")
    code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--student", "prune:1.5",
                           "--target", "x86-cpu-onnxruntime", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "1.5")


def test_stage_commands_reject_bad_input(run_cli, tmp_path):
    code, _, err = run_cli("distill", "--student", "edgekd.models:resnet", "--data", "digits", "--epochs", "0",
                           "--out", str(tmp_path / "d"))
    assert_clean_error(code, err, "epochs")
    code, _, err = run_cli("export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e"), "--data", "digits")
    assert_clean_error(code, err, "missing.pt")
    not_a_checkpoint = tmp_path / "junk.pt"
    not_a_checkpoint.write_bytes(b"junk")
    code, _, err = run_cli("export", str(not_a_checkpoint), "--out", str(tmp_path / "e"), "--data", "digits")
    assert_clean_error(code, err, "junk.pt", "not an edgekd checkpoint")
    code, _, err = run_cli("quantize", "edgekd.models:resnet", "--data", "digits", "--mode", "int4")
    assert_clean_error(code, err, "--mode 'int4'")
    code, _, err = run_cli("prune", "edgekd.models:resnet", "--ratio", "0", "--data", "digits")
    assert_clean_error(code, err, "ratio")
    code, _, err = run_cli("prune", "edgekd.models:resnet", "--ratio", "0.5", "--data", "digits",
                           "--channel-multiple", "0")
    assert_clean_error(code, err, "--channel-multiple 0")


def test_prune_then_export_through_the_cli(run_cli, tmp_path):
    # a trained model: the export gate refuses one that predicts a single class (an untrained net does)
    code, _, err = run_cli("distill", "--student", "edgekd.models:resnet", "--data", "digits", "--no-kd",
                           "--epochs", "2", "--out", str(tmp_path / "trained"))
    assert code == 0, err
    pruned = tmp_path / "pruned.pt"
    code, out, err = run_cli("prune", str(tmp_path / "trained" / "student.pt"), "--ratio", "0.5", "--data", "digits",
                             "--target", "x86-cpu-openvino", "--recovery-epochs", "1", "--out", str(pruned))
    assert code == 0, err
    assert pruned.is_file() and pruned.with_suffix(".pt2").is_file()
    report = json.loads(pruned.with_suffix(".json").read_text())
    assert report["after"]["params"] < 0.35 * report["before"]["params"]
    code, out, err = run_cli("export", str(pruned), "--out", str(tmp_path / "exp"), "--data", "digits",
                             "--format", "onnx")
    assert code == 0, err
    assert (tmp_path / "exp" / "model.onnx").is_file() and "top-1 agreement 1.0000" in out
    # an fp16 target profile exports FP16 by default; a bad --precision is a named input error
    code, out, err = run_cli("export", str(pruned), "--out", str(tmp_path / "gpu"), "--data", "digits",
                             "--format", "onnx", "--target", "nvidia-gpu-onnxruntime-cuda")
    assert code == 0, err
    assert "(FP16)" in out and json.loads((tmp_path / "gpu" / "model.export.json").read_text())["precision"] == "fp16"
    code, _, err = run_cli("export", str(pruned), "--out", str(tmp_path / "bad"), "--data", "digits",
                           "--precision", "int4")
    assert code == 2 and "precision must be one of fp32, fp16, got 'int4'" in err


def test_python_api_names_of_the_contract():
    import edgekd

    for name in ("compress", "distill", "prune", "quantize", "export", "benchmark", "load_target"):
        assert callable(getattr(edgekd, name)), name
    assert edgekd.load_target("x86-cpu-openvino").runtime == "openvino"
    assert "response" in edgekd.distill.LOSSES  # the callable packages stay packages


def test_compress_never_clears_a_folder_that_is_not_a_run(run_cli, tmp_path):
    folder = tmp_path / "myproject"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "important.pt").write_text("the user's own file")
    code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--data", "digits", "--out", str(folder))
    assert_clean_error(code, err, "not an edgekd run directory")
    # a bad student spec fails before an earlier run's state is touched
    run = tmp_path / "earlier-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "state.json").write_text("{}")
    (run / "checkpoints" / "epoch.pt").write_text("resumable state")
    code, _, err = run_cli("compress", "--student", "prune:1.5", "--out", str(run))
    assert_clean_error(code, err, "prune:RATIO needs RATIO in (0, 1), got '1.5'")
    assert (folder / "checkpoints" / "important.pt").is_file() and (run / "checkpoints" / "epoch.pt").is_file()


def test_a_teacher_made_for_other_data_is_named_with_the_data_shape(run_cli, tmp_path):
    import numpy as np

    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.random.default_rng(0).random((40, 3, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--data", str(rgb),
                           "--out", str(tmp_path / "run"))
    assert_clean_error(code, err, "teacher 'edgekd.models:resnet' does not take --data", "(1, 3, 8, 8)")


def test_unusable_output_paths_are_input_errors_before_any_work(run_cli, tmp_path, tiny_onnx):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, err = run_cli("prune", "edgekd.models:resnet", "--ratio", "0.5", "--data", "digits", "--out", str(tmp_path))
    assert_clean_error(code, err, "is a directory")
    code, _, err = run_cli("prune", "edgekd.models:resnet", "--ratio", "0.5", "--data", "digits",
                           "--out", str(a_file / "pruned.pt"))
    assert_clean_error(code, err, "is a file, not a directory")
    code, _, err = run_cli("distill", "--student", "edgekd.models:resnet", "--data", "digits", "--no-kd",
                           "--out", str(a_file))
    assert_clean_error(code, err, "exists and is not a directory")
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", "x86-cpu-onnxruntime", "--json", str(tmp_path))
    assert_clean_error(code, err, "--json", "is a directory")


def test_error_text_in_brackets_is_printed_verbatim(run_cli, tiny_onnx):
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", "x86-cpu-onnxruntime", "--data", "digits32")
    assert_clean_error(code, err, "[batch, 1, 8, 8]")
    code, _, err = run_cli("bench", str(tiny_onnx), "--target", "x86-cpu-onnxruntime", "--retention", "-1")
    assert_clean_error(code, err, "--retention -1.0")


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    import click

    import edgekd.cli as cli

    def interrupted(**kwargs):
        raise click.exceptions.Abort()

    monkeypatch.setattr(cli, "app", interrupted)
    assert cli.main(["distill"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "re-run with --resume" in err


def test_console_script_imports_factories_from_the_working_directory(tmp_path):
    """`edgekd` (not only `python -m edgekd`) finds a user's models.py beside them; a factory that
    fails is an input error naming it."""
    import subprocess
    import sys

    (tmp_path / "usermodels.py").write_text(
        "from torch import nn\n"
        "def linear():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "def broken():\n    raise RuntimeError('boom in factory')\n")
    script = Path(sys.executable).parent / "edgekd"

    def edgekd(*args):
        return subprocess.run([str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    done = edgekd("distill", "--student", "usermodels:linear", "--data", "digits", "--no-kd", "--epochs", "1",
                  "--out", "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "student.pt").is_file()
    assert "epoch 1/1" not in done.stdout  # progress goes to stderr; stdout has the results
    failed = edgekd("distill", "--student", "usermodels:broken", "--data", "digits", "--no-kd", "--out", "out2")
    assert_clean_error(failed.returncode, failed.stderr,
                       "usermodels:broken", "calling the factory failed: RuntimeError: boom in factory")


def test_text_data_with_an_image_model_is_named(run_cli, tmp_path):
    pruned = tmp_path / "p.pt"
    from edgekd.checkpoint import save_checkpoint
    from edgekd.models import ModelRef

    save_checkpoint(pruned, resnet(width=4), ref=ModelRef("edgekd.models:resnet", {"width": 4}))
    texts = tmp_path / "sayings.txt"  # text data of one's own: no Debian package needed
    texts.write_text("\n".join(f"saying number {i} is about something" for i in range(40)))
    code, _, err = run_cli("export", str(pruned), "--out", str(tmp_path / "x"), "--data", str(texts))
    assert_clean_error(code, err, "p.pt", "not a text encoder")
    code, _, err = run_cli("quantize", str(pruned), "--data", str(texts), "--out", str(tmp_path / "q.pt"))
    assert_clean_error(code, err, "--data sayings: text data", "edgekd compress")


def test_summary_prints_a_baseline_the_gate_rejected(capsys):
    """A failed baseline has no OpenVINO timing (and no score without its ONNX file): '-' and a mark, not a crash."""
    from edgekd.cli import _print_summary

    row = {"variant": "teacher-fp32", "metric": {"name": "accuracy", "value": 0.99}, "params": 10, "size_mb": 1.0,
           "latency_p50_ms": {"x86-cpu-openvino": 0.1, "x86-cpu-onnxruntime": 0.1}}
    failed = {**row, "variant": "teacher-int8-ptq", "verdict": "failed", "metric": {"name": "accuracy", "value": None},
              "latency_p50_ms": {"x86-cpu-onnxruntime": 0.05}}
    _print_summary({"ablation": [row, failed], "targets": [], "notes": []})
    out = capsys.readouterr().out
    assert "teacher-int8-ptq (gate failed)" in out and " - " in out
