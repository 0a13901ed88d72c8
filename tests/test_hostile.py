"""Defects a hostile-user pass found after the trust fixes: each is exit 2 or a failed gate now, never
a crash, a foreign file or a deleted one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgekd.errors import BadInput


def assert_refused(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_labels_alone_catch_a_model_that_predicts_a_few_classes():
    from edgekd.export.sanity import task_check

    labels = np.arange(300) % 10
    logits = np.zeros((300, 10), dtype=np.float32)
    logits[np.arange(300), np.where(labels < 5, 1, 2)] = 1.0  # two classes predicted, no metric recorded
    inputs = (np.random.default_rng(0).random((300, 4), dtype=np.float32),)
    figures, problems = task_check(logits, inputs, task="classification", labels=labels)
    assert figures["predicted_classes"] == 2 and "predicts only 2 of the 10 classes" in problems[0]
    chance = np.eye(10, dtype=np.float32)[np.random.default_rng(1).integers(0, 10, 300)]
    _, problems = task_check(chance, inputs, task="classification", labels=labels)
    assert problems and "no better than chance" in problems[0]
    _, problems = task_check(np.eye(10, dtype=np.float32)[labels], inputs, task="classification", labels=labels)
    assert problems == []


def test_a_failed_gate_never_deletes_the_users_files_of_the_same_name(tmp_path):
    from edgekd.data import load_data
    from edgekd.errors import GateFailed
    from edgekd.export import export
    from edgekd.models import resnet

    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.onnx").write_text("the user's own model")
    (out / "model.export.json").write_text('{"notes": "the user\'s"}')
    data = load_data("digits")
    broken = resnet(width=4).eval()
    for parameter in broken.parameters():
        torch.nn.init.zeros_(parameter)  # every input gives the same output
    with pytest.raises(GateFailed, match="collapsed"):
        export(model=broken, example_inputs=data.x_test[:1], out_dir=out, formats=["onnx"], parity_inputs=data.x_test,
               labels=data.y_test)
    assert (out / "model.onnx").read_text() == "the user's own model" and (out / "model.export.json").is_file()


def test_a_resumed_export_record_never_points_outside_the_run(tmp_path, monkeypatch):
    from edgekd.steps.export import _recorded

    run = tmp_path / "run"
    (run / "variants" / "x").mkdir(parents=True)
    (run / "variants" / "x" / "model.onnx").write_text("onnx")
    ctx = SimpleNamespace(run=SimpleNamespace(out=run, path=run / "state.json"))
    good = {"onnx": "variants/x/model.onnx", "openvino": None, "parity": {}, "int8_executed": {}}
    assert _recorded(ctx, "x", good)[0] == run / "variants" / "x" / "model.onnx"
    moved = SimpleNamespace(run=SimpleNamespace(out=Path("run"), path=Path("run/state.json")))  # spelled relatively
    monkeypatch.chdir(tmp_path)
    assert _recorded(moved, "x", good)[0].resolve() == run / "variants" / "x" / "model.onnx"
    for tampered in ({**good, "onnx": "/etc/passwd"}, {**good, "onnx": "../../etc/passwd"}, {"parity": {}}, 5):
        with pytest.raises(BadInput, match="cannot resume stage 'export:x'"):
            _recorded(ctx, "x", tampered)


def test_a_malformed_stage_record_is_refused_at_read(tmp_path):
    from edgekd.runstate import RUN_FORMAT, read_state

    (tmp_path / "state.json").write_text(json.dumps({"format": RUN_FORMAT, "fingerprint": {},
                                                     "stages": {"student-no-kd": {"info": 5}}}))
    with pytest.raises(BadInput, match="malformed edgekd run state"):
        read_state(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"formats": []}, "formats"),
    ({"formats": ["openvino"]}, "lacks onnx"),
    ({"student": "/nonexistent/student.pt"}, "no such checkpoint file"),
    ({"quant": {"weight_bits": 3}}, "quant.weight_bits"),
    ({"quant": {"max_steps": 0}}, "quant.max_steps"),
    ({"lm": {"divergence": "kl"}}, "lm.divergence"),
    ({"lm": {"top_k": 100_000}}, "lm.top_k"),
    ({"distill": {"max_steps": -1}}, "max_steps"),
])
def test_recipe_mistakes_are_caught_before_any_work(run_cli, tmp_path, overrides, message):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"teacher": "edgekd.models:resnet", "data": "digits",
                                      "out": str(tmp_path / "run"), **overrides}))
    code, _, err = run_cli("compress", str(recipe))
    assert_refused(code, err, message)
    assert not (tmp_path / "run").exists()  # nothing created, no teacher built


def test_flag_bounds_are_named(run_cli, tmp_path):
    code, _, err = run_cli("prune", "edgekd.models:resnet", "--ratio", "0.5", "--data", "digits", "--steps",
                           "1000000000", "--out", str(tmp_path / "p.pt"))
    assert_refused(code, err, "--steps")


def test_a_damaged_teacher_cache_file_is_named_not_a_crash(tmp_path):
    from edgekd.distill.cache import teacher_cache
    from edgekd.models import resnet

    x = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    teacher = resnet(width=4).eval()
    entry = teacher_cache(teacher, x, taps=[], collate=None, batch_size=4, root=tmp_path)
    np.save(entry.directory / "outputs.npy", np.zeros((3, 10), dtype=np.float16))  # wrong rows, as a foreign file
    with pytest.raises(BadInput, match="delete it to recompute"):
        teacher_cache(teacher, x, taps=[], collate=None, batch_size=4, root=tmp_path)


def test_check_does_not_follow_an_artifact_link_out_of_the_run(tmp_path):
    from edgekd.io import sha256_file
    from edgekd.report import check_run

    outside = tmp_path / "secret.txt"
    outside.write_text("not the run's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.onnx").symlink_to(outside)
    (run / "manifest.json").write_text(json.dumps({
        "teacher": {"sha256": "0" * 64}, "data": {"sha256": "0" * 64},
        "artifacts": {"model.onnx": {"sha256": sha256_file(outside)}}}))
    result = check_run(run_dir=run)
    assert result.status == "corrupt" and "link to a file outside the run" in result.problems[0]
