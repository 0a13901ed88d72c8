"""Manifest hashes and check_run verdicts on a small fake run directory."""

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import BadInput
from edgekd.report import build_manifest, check_run, read_manifest, write_manifest

TEACHER = {"ref": "edgekd.zoo:digits_teacher", "sha256": "1" * 64}
DATA = {"name": "digits", "sha256": "2" * 64, "provenance": {"source": "sklearn load_digits"}}
FILES = {  # the artifacts a run leaves behind
    "model.onnx": b"onnx-graph-bytes",
    "openvino/model.xml": b"<net/>",
    "openvino/model.bin": bytes(range(256)),
    "report.json": b'{"ablation": []}',
    "variants/teacher-fp32.onnx": b"teacher",
}
NOT_ARTIFACTS = {  # state, caches, temp files and rendered views of report.json
    "checkpoints/last.pt": b"state",
    "state.json": b'{"stages": {}}',
    "report.md": b"# report",
    "report.html": b"<html/>",
    "plots/layers.png": b"png",
    ".model.onnx.x1y2.tmp": b"half-written",
    "openvino/__pycache__/x.pyc": b"cache",
}


@pytest.fixture
def run_dir(tmp_path):
    for relative, content in {**FILES, **NOT_ARTIFACTS}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(content)
    manifest = build_manifest(run_dir=tmp_path, teacher=TEACHER, data=DATA, recipe={"student": "prune:0.5"},
                              hyperparameters={"epochs": 3, "temperature": 4.0, "alpha": 0.7}, seed=7)
    write_manifest(run_dir=tmp_path, manifest=manifest)
    return tmp_path


def test_manifest_records_every_artifact_hash_and_the_run_inputs(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == set(FILES)
    for relative, content in FILES.items():
        assert manifest["artifacts"][relative] == {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    assert manifest["teacher"] == TEACHER and manifest["data"] == DATA and manifest["seed"] == 7
    assert manifest["recipe"] == {"student": "prune:0.5"}
    assert manifest["hyperparameters"] == {"epochs": 3, "temperature": 4.0, "alpha": 0.7}
    versions = manifest["versions"]
    assert versions["numpy"] == np.__version__ and versions["python"] == platform.python_version()
    assert set(versions) == {"edgekd", "torch", "onnx", "onnxruntime", "openvino", "numpy", "python"}
    assert manifest["host"]["arch"] == platform.machine().lower() and "isa" in manifest["host"]
    assert manifest["created"].endswith("Z")
    assert read_manifest(run_dir=run_dir) == manifest


def test_explicit_artifact_list_is_recorded_relative_to_the_run(run_dir):
    manifest = build_manifest(run_dir=run_dir, teacher=TEACHER, data=DATA, recipe={}, hyperparameters={}, seed=0,
                              artifacts=[run_dir / "model.onnx", "openvino/model.xml"])
    assert list(manifest["artifacts"]) == ["model.onnx", "openvino/model.xml"]


def test_untouched_run_checks_ok(run_dir):
    result = check_run(run_dir=run_dir, current_teacher_sha256=TEACHER["sha256"], current_data_sha256=DATA["sha256"])
    assert result.status == "ok" and result.problems == [] and result.exit_code == 0
    assert sorted(result.verified) == sorted(FILES) and result.unchecked_inputs == []


def test_inputs_without_current_hash_are_reported_unchecked(run_dir):
    result = check_run(run_dir=run_dir)
    assert result.status == "ok" and result.unchecked_inputs == ["teacher", "data"]


def test_one_changed_byte_makes_the_run_corrupt_naming_the_artifact(run_dir):
    blob = bytearray((run_dir / "openvino/model.bin").read_bytes())
    blob[100] ^= 0x01
    (run_dir / "openvino/model.bin").write_bytes(bytes(blob))
    result = check_run(run_dir=run_dir)
    assert result.status == "corrupt" and result.exit_code == 1
    assert result.modified == ["openvino/model.bin"]
    assert len(result.problems) == 1 and "openvino/model.bin" in result.problems[0]


def test_missing_artifact_is_corrupt(run_dir):
    (run_dir / "model.onnx").unlink()
    result = check_run(run_dir=run_dir)
    assert result.status == "corrupt" and result.missing == ["model.onnx"]
    assert result.problems == ["missing artifact: model.onnx"]


def test_changed_teacher_or_data_makes_the_run_stale(run_dir):
    teacher_moved = check_run(run_dir=run_dir, current_teacher_sha256="3" * 64, current_data_sha256=DATA["sha256"])
    assert teacher_moved.status == "stale" and teacher_moved.stale_inputs == ["teacher"]
    assert "edgekd.zoo:digits_teacher" in teacher_moved.problems[0] and teacher_moved.exit_code == 1
    data_moved = check_run(run_dir=run_dir, current_data_sha256="4" * 64)
    assert data_moved.status == "stale" and data_moved.stale_inputs == ["data"]


def test_corrupt_outranks_stale_and_both_problems_are_listed(run_dir):
    (run_dir / "report.json").write_text("{}")
    result = check_run(run_dir=run_dir, current_teacher_sha256="3" * 64)
    assert result.status == "corrupt" and len(result.problems) == 2


def test_new_files_are_listed_but_not_a_problem(run_dir):
    (run_dir / "notes.txt").write_text("added later")
    (run_dir / "checkpoints" / "epoch2.pt").write_bytes(b"more state")
    result = check_run(run_dir=run_dir)
    assert result.status == "ok" and result.unrecorded == ["notes.txt"]


def test_missing_or_broken_manifest_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="manifest.json: no manifest"):
        check_run(run_dir=tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        check_run(run_dir=tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"teacher": TEACHER, "data": DATA}))
    with pytest.raises(BadInput, match="'artifacts'"):
        check_run(run_dir=tmp_path)


def test_manifest_entry_escaping_the_run_is_bad_input(run_dir):
    manifest = read_manifest(run_dir=run_dir)
    manifest["artifacts"]["../outside.bin"] = {"sha256": "0" * 64, "size": 1}
    write_manifest(run_dir=run_dir, manifest=manifest)
    with pytest.raises(BadInput, match="outside the run directory"):
        check_run(run_dir=run_dir)


@pytest.mark.parametrize("teacher, data, fragment", [
    ({"ref": "t"}, DATA, "teacher: missing key 'sha256'"),
    ({"ref": "t", "sha256": "not-a-hash"}, DATA, "teacher.sha256"),
    (TEACHER, {"name": "digits", "sha256": "2" * 64}, "data: missing key 'provenance'"),
])
def test_build_manifest_rejects_malformed_inputs(tmp_path, teacher, data, fragment):
    with pytest.raises(BadInput, match=fragment):
        build_manifest(run_dir=tmp_path, teacher=teacher, data=data, recipe={}, hyperparameters={}, seed=0)


def test_artifact_outside_or_missing_is_bad_input(run_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("other") / "x.bin"
    outside.write_bytes(b"x")
    for artifacts, fragment in (([outside], "outside the run directory"), (["nope.onnx"], "nope.onnx does not exist")):
        with pytest.raises(BadInput, match=fragment):
            build_manifest(run_dir=run_dir, teacher=TEACHER, data=DATA, recipe={}, hyperparameters={}, seed=0,
                           artifacts=artifacts)


def test_a_relative_run_directory_is_hashed_and_checked(tmp_path, monkeypatch):
    """`edgekd compress --out runs/demo` passes a relative run directory."""
    from edgekd.report import build_manifest, check_run, write_manifest

    monkeypatch.chdir(tmp_path)
    run = Path("runs/demo")
    (run / "openvino").mkdir(parents=True)
    (run / "model.onnx").write_bytes(b"onnx bytes")
    (run / "openvino" / "model.xml").write_text("<xml/>")
    manifest = build_manifest(run_dir=run, teacher={"ref": "t", "sha256": "a" * 64},
                              data={"name": "d", "sha256": "b" * 64, "provenance": {}}, recipe={},
                              hyperparameters={}, seed=0)
    assert set(manifest["artifacts"]) == {"model.onnx", "openvino/model.xml"}
    write_manifest(run_dir=run, manifest=manifest)
    assert check_run(run_dir=run).status == "ok"
