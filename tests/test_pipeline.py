"""`edgekd compress` end to end on a tiny teacher from a user module, plus check and resume."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"teacher-fp32", "teacher-int8-ptq", "student-no-kd", "student-kd-fp32", "student-kd-qat-int8"}
PER_TENSOR = "student-kd-qat-int8-x86-cpu-per-tensor"


def tiny_recipe(out: Path) -> dict:
    return {
        "teacher": "tiny_models:trained_teacher", "student": "prune:0.5", "data": "digits",
        "targets": ["x86-cpu-onnxruntime", "intel-npu-core-ultra"], "out": str(out),
        "distill": {"epochs": 2, "batch_size": 64}, "quant": {"epochs": 1, "latency_aware": False},
        "bench": {"time_budget_s": 0.2, "ablation_time_budget_s": 0.1, "min_iterations": 10, "warmup": 2},
    }


def cli(*args: str, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    recipe = out.parent / "recipe.yaml"
    per_tensor = yaml.safe_load((ROOT / "targets" / "x86-cpu-onnxruntime.yaml").read_text())
    per_tensor["name"] = "x86-cpu-per-tensor"  # another INT8 scheme (per-tensor weights): its own QAT student
    per_tensor["quantization"]["weights"]["per_channel"] = False
    (out.parent / "x86-cpu-per-tensor.yaml").write_text(yaml.safe_dump(per_tensor))
    mixed = tiny_recipe(out)
    # an fp16 target (the run adds the FP16 student) and a second INT8 scheme
    mixed["targets"] += ["nvidia-gpu-onnxruntime-cuda", str(out.parent / "x86-cpu-per-tensor.yaml")]
    recipe.write_text(yaml.safe_dump(mixed))
    done = cli("compress", str(recipe), timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out, done


def test_run_directory_satisfies_the_contract(finished_run):
    out, done = finished_run
    for name in ("model.onnx", "openvino/model.xml", "openvino/model.bin", "report.json", "report.md",
                 "report.html", "manifest.json"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))
    report = json.loads((out / "report.json").read_text())
    rows = {row["variant"]: row for row in report["ablation"]}
    assert set(rows) == VARIANTS  # the contract's five; students made for particular targets are listed apart
    assert {row["variant"] for row in report["deployables"]} == {"student-kd-fp16", PER_TENSOR}
    targets = {t["name"]: t for t in report["targets"]}
    measured = targets["x86-cpu-onnxruntime"]
    # The INT8 student ships unless it ran clearly slower than the FP32 KD student in the same rounds.
    deployed = "student-kd-fp32" if "note" in measured else "student-kd-qat-int8"
    assert report["deployed"] == deployed  # the run root holds what the first target deploys
    assert (out / "model.onnx").read_bytes() == (out / "variants" / deployed / "model.onnx").read_bytes()
    speedups = report["speedup_vs_teacher"]
    assert speedups["x86-cpu-onnxruntime"] == pytest.approx(rows["teacher-fp32"]["latency_p50_ms"]["x86-cpu-onnxruntime"]
                                                            / rows[deployed]["latency_p50_ms"]["x86-cpu-onnxruntime"])
    for row in rows.values():
        assert {"metric", "params", "size_mb", "latency_p50_ms"} <= set(row)
        assert 0.0 <= row["metric"]["value"] <= 1.0 and row["metric"]["name"] == "accuracy"
        assert row["latency_p50_ms"]["x86-cpu-onnxruntime"] > 0
        low, high = row["latency_spread_ms"]["x86-cpu-onnxruntime"]
        assert low <= row["latency_p50_ms"]["x86-cpu-onnxruntime"] <= high
    assert rows["student-kd-fp32"]["params"] < 0.7 * rows["teacher-fp32"]["params"]
    assert measured["available"] and measured["slo"]["verdict"] in ("pass", "fail")
    assert {"p50", "p90", "p95", "p99"} <= set(measured["latency_ms"])
    assert measured["int8_executed"] is (deployed == "student-kd-qat-int8")
    assert (measured["variant"], measured["artifact"]) == (deployed, "model.onnx")
    if deployed == "student-kd-fp32":
        assert measured["note"] in report["notes"] and "deploys the FP32 student" in measured["note"]
        # the rounds the decision rests on (the shared ones, or the pair's focused re-timing) said so
        int8, fp32 = (measured["fp32_instead_timing"][v]["spread"] for v in ("int8", "fp32"))
        assert fp32[1] < int8[0]
    absent = targets["intel-npu-core-ultra"]
    assert absent["available"] is False and absent["reason"] and absent["slo"]["verdict"] == "not-measured"
    for runtime in ("onnx", "openvino"):
        assert report["parity"][runtime]["top1_agreement"] >= 0.99
    assert report["audit"]["disagreement_rate"] >= 0
    assert done.returncode == (1 if measured["slo"]["verdict"] == "fail" else 0)


def test_fp16_target_deploys_the_kd_student_in_fp16(finished_run):
    out, done = finished_run
    assert "student-kd-fp16" in done.stdout and "deploys" in done.stdout  # the summary says who each target runs
    report = json.loads((out / "report.json").read_text())
    gpu = next(t for t in report["targets"] if t["name"] == "nvidia-gpu-onnxruntime-cuda")
    assert (gpu["variant"], gpu["artifact"]) == ("student-kd-fp16", "variants/student-kd-fp16/model.onnx")
    assert gpu["slo"]["verdict"] == "not-measured"  # no CUDA here: named, never passed
    graph = onnx.load(str(out / gpu["artifact"]))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    rows = {row["variant"]: row for row in report["ablation"] + report["deployables"]}
    fp16, fp32 = rows["student-kd-fp16"], rows["student-kd-fp32"]
    assert fp16["precision"] == "fp16" and fp16["params"] == fp32["params"]
    assert abs(fp16["metric"]["value"] - fp32["metric"]["value"]) <= 0.01  # measured from the FP16 file itself
    assert fp16["size_mb"] < 0.8 * fp32["size_mb"]  # weights halve; graph overhead does not (tiny model)
    assert gpu["artifact"] in json.loads((out / "manifest.json").read_text())["artifacts"]
    assert "student-kd-fp16" not in report["training"]  # the KD student's curves are not repeated
    assert "student-kd-fp16" in (out / "report.md").read_text()


def test_a_second_int8_scheme_gets_its_own_qat_student(finished_run):
    out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    entry = next(t for t in report["targets"] if t["name"] == "x86-cpu-per-tensor")
    if "note" not in entry:  # else its INT8 student ran clearly slower than the FP32 KD student, which it deploys
        assert (entry["variant"], entry["artifact"]) == (PER_TENSOR, f"variants/{PER_TENSOR}/model.onnx")
        assert entry["available"] and entry["int8_executed"] is True
    graph = onnx.load(str(out / "variants" / PER_TENSOR / "model.onnx")).graph
    weights = {i.name: i for i in graph.initializer}
    conv_weight_scales = [weights[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"
                          and n.input[0] in weights and len(weights[n.input[0]].dims) == 4]
    assert conv_weight_scales and all(len(s.dims) == 0 for s in conv_weight_scales)  # per-tensor, as asked
    main = onnx.load(str(out / "variants" / "student-kd-qat-int8" / "model.onnx")).graph
    main_weights = {i.name: i for i in main.initializer}
    assert any(len(main_weights[n.input[1]].dims) == 1 for n in main.node if n.op_type == "DequantizeLinear"
               and n.input[0] in main_weights and len(main_weights[n.input[0]].dims) == 4)  # per-channel
    assert not (out / "variants" / PER_TENSOR / "openvino").exists()  # no OpenVINO target deploys it
    assert any(PER_TENSOR in note for note in report["notes"])


def test_manifest_and_check(finished_run, tmp_path):
    out, _ = finished_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["teacher"]["sha256"]) == 64 and manifest["data"]["sha256"]
    assert "model.onnx" in json.dumps(manifest["artifacts"])
    teacher = manifest["teacher"]["ref"]  # the user names the teacher; check never imports the manifest's
    ok = cli("check", str(out), "--teacher", teacher, timeout=300)
    assert ok.returncode == 0 and "ok" in ok.stdout
    stale = cli("check", str(out), "--teacher", teacher, env_extra={"TINY_TEACHER_SEED": "1"}, timeout=300)
    assert stale.returncode == 1 and "stale" in stale.stdout


def test_check_detects_a_modified_artifact(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    result = cli("check", str(copy), timeout=300)
    assert result.returncode == 1 and "corrupt" in result.stdout and "model.onnx" in result.stdout


def test_report_rerenders_from_report_json(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.md").unlink()
    result = cli("report", str(copy), timeout=300)
    assert result.returncode == 0 and (copy / "report.md").is_file()


@pytest.mark.slow
def test_resume_after_a_killed_run(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "compress", str(recipe)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        if state.is_file() and "student-no-kd" in json.loads(state.read_text() or "{}").get("stages", {}):
            break
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    finished = json.loads(state.read_text())["stages"]
    assert "student-no-kd" in finished and "export:student-kd-qat-int8" not in finished
    kept = (out / "stages" / "student-no-kd.pt").stat().st_mtime_ns
    resumed = cli("compress", str(recipe), "--resume", timeout=900)
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    assert (out / "stages" / "student-no-kd.pt").stat().st_mtime_ns == kept  # not redone
    assert json.loads((out / "report.json").read_text())["ablation"]


def test_resume_refuses_a_changed_recipe(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"format": "edgekd.run/1", "stages": {},
                                                "fingerprint": {"recipe": "other", "teacher": "x", "data": "y"}}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe(out), "teacher": "edgekd.models:resnet"}))
    result = cli("compress", str(recipe), "--resume", timeout=300)
    assert result.returncode == 2 and "cannot resume" in result.stderr and "Traceback" not in result.stderr


def test_a_teacher_worse_than_the_no_kd_student_is_flagged():
    from edgekd.steps.report import _teacher_notes

    def metrics(teacher, baseline):
        return {"teacher-fp32": {"name": "accuracy", "value": teacher},
                "student-no-kd": {"name": "accuracy", "value": baseline}}

    (note,) = _teacher_notes(metrics(0.284, 0.980))  # a 16x16 teacher fed 8x8 digits, as a user once did
    assert "teacher scores 0.284 accuracy" in note and "(0.980)" in note
    assert _teacher_notes(metrics(0.97, 0.99)) == []  # a student may edge past its teacher


def test_manifest_refs_to_files_are_absolute(tmp_path, monkeypatch):
    from edgekd.steps.report import checkable_ref

    monkeypatch.chdir(tmp_path)
    Path("teacher.pt").write_text("x")
    assert checkable_ref("teacher.pt") == str(tmp_path / "teacher.pt")  # `check` works from any directory
    assert checkable_ref("edgekd.zoo:digits_teacher") == "edgekd.zoo:digits_teacher"


def test_starting_over_empties_an_earlier_run_but_never_a_foreign_folder(tmp_path):
    from edgekd.errors import BadInput
    from edgekd.runstate import RunState, check_run_folder

    earlier = tmp_path / "run"
    (earlier / "variants" / "student-kd-qat-int8-old-target").mkdir(parents=True)
    (earlier / "variants" / "student-kd-qat-int8-old-target" / "model.onnx").write_text("from another plan")
    (earlier / "state.json").write_text('{"format": "edgekd.run/1", "fingerprint": {}, "stages": {}}')
    RunState(earlier, resume=False, fingerprint={"recipe": "new"})
    assert sorted(p.name for p in earlier.iterdir()) == ["state.json"]  # nothing stale reaches the manifest
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("x")
    with pytest.raises(BadInput, match="not an edgekd run directory"):
        check_run_folder(foreign)
    assert (foreign / "cat.jpg").is_file()
