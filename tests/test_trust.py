"""Issue 13: no input names code to run, no folder is emptied that edgekd did not make, no collapsed
model passes the gate, and a crash is never mistaken for bad input. Each case as a hostile user tried it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from edgekd.checkpoint import FORMAT, load_checkpoint, load_model, model_sha256, save_checkpoint
from edgekd.errors import BadInput
from edgekd.models import ModelRef, resnet


def assert_refused(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def write_payload(path: Path, **fields) -> Path:
    payload = {"format": FORMAT, "factory": "edgekd.models:resnet", "kwargs": {"width": 4}, "transforms": [],
               "meta": {}, "state_dict": resnet(width=4).state_dict()}
    payload.update(fields)
    payload = {k: v for k, v in payload.items() if v is not None}
    torch.save(payload, path)
    return path


@pytest.fixture
def evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose factory is `os:system`, and the file its command would create."""
    marker = tmp_path / "pwned"
    return write_payload(tmp_path / "evil.pt", factory="os:system", kwargs={"command": f"touch {marker}"}), marker


def test_a_checkpoint_naming_os_system_runs_nothing_anywhere_it_is_read(run_cli, evil_checkpoint, tmp_path):
    evil, marker = evil_checkpoint
    attempts = [
        ("export", str(evil), "--out", str(tmp_path / "e"), "--data", "digits"),
        ("distill", "--teacher", str(evil), "--student", "edgekd.models:resnet", "--data", "digits",
         "--out", str(tmp_path / "d")),
        ("distill", "--student", str(evil), "--data", "digits", "--no-kd", "--out", str(tmp_path / "d2")),
        ("quantize", str(evil), "--data", "digits", "--out", str(tmp_path / "q.pt")),
        ("prune", str(evil), "--ratio", "0.5", "--data", "digits", "--out", str(tmp_path / "p.pt")),
        ("compress", "--teacher", str(evil), "--data", "digits", "--out", str(tmp_path / "c")),
    ]
    for args in attempts:
        code, _, err = run_cli(*args)
        assert_refused(code, err, "'os:system'", "--trust-factory os:system")
    assert not marker.exists()


def test_resuming_a_run_with_a_tampered_stage_checkpoint_runs_nothing(tmp_path, evil_checkpoint):
    from edgekd.runstate import RUN_FORMAT, RunState

    evil, marker = evil_checkpoint
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "student.pt").write_bytes(evil.read_bytes())
    (run / "state.json").write_text(json.dumps({"format": RUN_FORMAT, "fingerprint": {"recipe": "r"},
                                                "stages": {"student": {"info": {}}}}))
    state = RunState(run, resume=True, fingerprint={"recipe": "r"})
    with pytest.raises(BadInput, match="'os:system'"):
        state.model("student", build=lambda: pytest.fail("a finished stage is loaded, not rebuilt"))
    assert not marker.exists()


def test_the_demo_teacher_cache_is_a_checkpoint_like_any_other(tmp_path, monkeypatch, evil_checkpoint):
    from edgekd import zoo
    from edgekd.data import load_data

    evil, marker = evil_checkpoint
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    cached = (zoo.cache_dir() / "zoo" /
              f"digits_teacher-w32-{load_data('digits16').sha256[:12]}-digits16-e20-s0.pt")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(evil.read_bytes())
    with pytest.raises(BadInput, match="'os:system'"):
        zoo.digits_teacher()
    assert not marker.exists()


def _user_factory_module(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "usermodels.py").write_text(
        "from edgekd.models import resnet\n\ndef tiny(width=4):\n    return resnet(width=width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usermodels:tiny"


def test_a_user_factory_is_called_only_once_the_user_trusts_it(run_cli, tmp_path, monkeypatch):
    ref = _user_factory_module(tmp_path, monkeypatch)
    path = write_payload(tmp_path / "user.pt", factory=ref, kwargs={"width": 4})
    with pytest.raises(BadInput, match="--trust-factory usermodels:tiny"):
        load_checkpoint(path)
    assert load_checkpoint(path, trusted_factories=[ref]).ref.factory == ref
    monkeypatch.setenv("EDGEKD_TRUSTED_FACTORIES", f"other:thing, {ref}")
    assert load_checkpoint(path).ref.factory == ref
    monkeypatch.delenv("EDGEKD_TRUSTED_FACTORIES")
    code, _, err = run_cli("export", str(path), "--out", str(tmp_path / "e"), "--data", "digits",
                           "--trust-factory", "not a ref")
    assert_refused(code, err, "--trust-factory 'not a ref'")


def test_every_checkpoint_field_is_checked_before_anything_is_built(tmp_path):
    cases = {
        "no-factory.pt": ({"factory": None}, "field 'factory' must be a str, found missing"),
        "int-factory.pt": ({"factory": 7}, "field 'factory' must be a str, found a int"),
        "list-kwargs.pt": ({"kwargs": [1]}, "field 'kwargs' must be a dict"),
        "bad-transforms.pt": ({"transforms": [{"config": {}}]}, "field 'transforms[0]'"),
        "bad-state.pt": ({"state_dict": {"fc.weight": "zeros"}}, "'fc.weight' does not"),
        "huge-width.pt": ({"kwargs": {"width": 10**9}}, "argument 'width' of edgekd.models:resnet"),
        "unknown-kwarg.pt": ({"kwargs": {"width": 4, "evil": 1}}, "argument 'evil'"),
        "bad-replay.pt": ({"transforms": [{"name": "prune", "config": {"kept_layers": 5}}]},
                          "transform 'prune' cannot be replayed"),
    }
    for name, (fields, message) in cases.items():
        with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_checkpoint(write_payload(tmp_path / name, **fields))


def test_check_never_imports_what_the_manifest_names(run_cli, tmp_path, monkeypatch):
    run = tmp_path / "downloaded-run"
    run.mkdir()
    (tmp_path / "payload.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n"
                                         "def teacher():\n    raise SystemExit\n")
    monkeypatch.chdir(tmp_path)  # the working directory is on the import path of `edgekd`
    (run / "manifest.json").write_text(json.dumps({
        "teacher": {"ref": "payload:teacher", "sha256": "0" * 64}, "data": {"name": "digits", "sha256": "0" * 64},
        "artifacts": {}}))
    code, _, err = run_cli("check", str(run))
    assert code == 1 and "teacher not re-checked: name it with --teacher" in err
    assert not (tmp_path / "pwned").exists()
    code, out, _ = run_cli("check", str(run), "--teacher", "edgekd.models:resnet", "--json")
    assert "teacher" in json.loads(out)["stale_inputs"]  # re-checked only when the user names it


def test_hugging_face_folders_load_no_pickles_and_no_remote_code(run_cli, tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    pickled = tmp_path / "pickled"
    BertModel(config).save_pretrained(pickled)
    torch.save(BertModel(config).state_dict(), pickled / "pytorch_model.bin")  # as older checkpoints ship
    (pickled / "model.safetensors").unlink()
    with pytest.raises(BadInput, match="pickled PyTorch weights"):
        load_model(pickled)
    remote = tmp_path / "remote"
    BertModel(config).save_pretrained(remote)
    settings = json.loads((remote / "config.json").read_text())
    settings.update(model_type="evil-remote", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (remote / "config.json").write_text(json.dumps(settings))
    (remote / "modeling_evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n")
    code, _, err = run_cli("distill", "--teacher", str(remote), "--student", "layers:1", "--data", "digits",
                           "--out", str(tmp_path / "d"))
    assert_refused(code, err, str(remote))
    assert not (tmp_path / "pwned").exists()


# ---- data loss ---------------------------------------------------------------------------------

def test_a_folder_with_another_tools_state_json_is_never_emptied(run_cli, tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "notes").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("two years of work")
    (thesis / "state.json").write_text(json.dumps({"stages": {}, "editor": "vim"}))
    code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--data", "digits", "--out", str(thesis))
    assert_refused(code, err, "not an edgekd run state")
    assert (thesis / "thesis.tex").read_text() == "two years of work" and (thesis / "notes").is_dir()


def test_starting_over_clears_only_what_edgekd_wrote(tmp_path):
    from edgekd.runstate import RunState

    run = tmp_path / "run"
    RunState(run, resume=False, fingerprint={"recipe": "old"})
    (run / "variants" / "old").mkdir(parents=True)
    (run / "model.onnx").write_text("old artifact")
    (run / "my-notes.txt").write_text("the user's")
    RunState(run, resume=False, fingerprint={"recipe": "new"})
    assert sorted(p.name for p in run.iterdir()) == ["my-notes.txt", "state.json"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable edgekd run state"),
    ('{"format": "edgekd.run/1", "fingerprint": [], "stages": {}}', "malformed edgekd run state"),
    ('{"format": "edgekd.run/1", "fingerprint": {}, "stages": {"student": 3}}', "malformed edgekd run state"),
])
def test_a_malformed_run_state_is_named_with_or_without_resume(run_cli, tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(content)
    for extra in ((), ("--resume",)):
        code, _, err = run_cli("compress", "--teacher", "edgekd.models:resnet", "--data", "digits",
                               "--out", str(run), *extra)
        assert_refused(code, err, message)
        assert "run without --resume" not in err


# ---- the gate catches a model that does not work -----------------------------------------------

@pytest.fixture(scope="module")
def quantized_checkpoint(tmp_path_factory) -> tuple[Path, float]:
    """A trained ResNet on digits, PTQ-quantized through the CLI (which records its accuracy)."""
    from edgekd.cli import main

    work = tmp_path_factory.mktemp("gate")
    assert main(["distill", "--student", "edgekd.models:resnet", "--data", "digits", "--no-kd", "--epochs", "3",
                 "--out", str(work / "fp32")]) == 0
    assert main(["quantize", str(work / "fp32" / "student.pt"), "--data", "digits", "--mode", "ptq",
                 "--no-latency-aware", "--out", str(work / "q.pt")]) == 0
    payload = torch.load(work / "q.pt", weights_only=True)
    return work / "q.pt", payload["meta"]["metrics"]["accuracy"]


def tampered(source: Path, target: Path, change) -> Path:
    payload = torch.load(source, weights_only=True)
    for key in list(payload["state_dict"]):
        payload["state_dict"][key] = change(key, payload["state_dict"][key])
    torch.save(payload, target)
    return target


def test_a_healthy_quantized_checkpoint_passes_and_records_its_check(run_cli, quantized_checkpoint, tmp_path):
    path, accuracy = quantized_checkpoint
    assert accuracy > 0.8
    code, _, err = run_cli("export", str(path), "--out", str(tmp_path / "ok"), "--data", "digits", "--format", "onnx")
    assert code == 0, err
    check = json.loads((tmp_path / "ok" / "model.export.json").read_text())["task_check"]
    assert check["predicted_classes"] == 10 and check["accuracy"] > 0.8 and check["recorded_accuracy"] == accuracy


@pytest.mark.parametrize("name, change", [
    ("scales-x1e6", lambda k, v: v * 1e6 if k.endswith("weight_quantizer.scale") else v),
    ("zeroed-weights", lambda k, v: torch.zeros_like(v) if k.endswith(".weight") and v.dim() > 1 else v),
])
def test_a_collapsed_model_fails_the_gate_and_ships_nothing(run_cli, quantized_checkpoint, tmp_path, name, change):
    path = tampered(quantized_checkpoint[0], tmp_path / f"{name}.pt", change)
    out = tmp_path / "out"
    code, _, err = run_cli("export", str(path), "--out", str(out), "--data", "digits")
    assert_refused(code, err, "the model has collapsed", exit_code=1)
    assert not (out / "model.onnx").exists() and (out / "rejected" / "model" / "gate.json").is_file()


@pytest.mark.parametrize("name, change, message", [
    ("negated", lambda k, v: -v if k.endswith("weight_quantizer.scale") else v, "must be > 0"),
    ("nan", lambda k, v: torch.full_like(v, float("nan")) if k.endswith("input_quantizer.scale") else v,
     "must be finite"),
    # a wrong dtype is refused, not cast: 1e9 would wrap into the uint8 zero point, a complex scale lose its part
    ("float-zero", lambda k, v: torch.full(v.shape, 1e9) if k.endswith("input_quantizer.zero_point") else v,
     "zero_point: must have dtype torch.uint8 (found torch.float32)"),
    ("complex-scale", lambda k, v: v.to(torch.complex64) if k.endswith("weight_quantizer.scale") else v,
     "must be a real floating tensor (found torch.complex64)"),
    ("int-scale", lambda k, v: torch.ones(v.shape, dtype=torch.int64) if k.endswith("input_quantizer.scale")
     else v, "must be a real floating tensor (found torch.int64)"),
])
def test_unusable_quantization_parameters_are_refused_at_load(run_cli, quantized_checkpoint, tmp_path, name,
                                                              change, message):
    path = tampered(quantized_checkpoint[0], tmp_path / f"{name}.pt", change)
    code, _, err = run_cli("export", str(path), "--out", str(tmp_path / "out"), "--data", "digits")
    assert_refused(code, err, f"{name}.pt", message)


def test_accuracy_far_below_what_the_checkpoint_recorded_fails_the_gate(quantized_checkpoint, tmp_path):
    from edgekd.data import load_data
    from edgekd.errors import GateFailed
    from edgekd.export import export

    data = load_data("digits")
    model = load_checkpoint(quantized_checkpoint[0]).model
    shuffled = data.y_test[torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(0)).numpy()]
    with pytest.raises(GateFailed, match="far below the 0.9900 the checkpoint recorded"):
        export(model=model, example_inputs=data.x_test[:1], out_dir=tmp_path, formats=["onnx"],
               parity_inputs=data.x_test, labels=shuffled, recorded_accuracy=0.99)


# ---- exit codes, reproducibility ---------------------------------------------------------------

def test_a_crash_is_exit_3_and_says_it_is_a_bug(run_cli, monkeypatch):
    import edgekd.pipeline

    def crash(**_):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(edgekd.pipeline, "compress", crash)
    code, _, err = run_cli("compress")
    assert code == 3 and "bug in edgekd" in err and "--debug" in err and "Traceback" not in err


def test_ctrl_c_prints_how_to_resume(run_cli, monkeypatch):
    import edgekd.pipeline

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgekd.pipeline, "compress", interrupted)
    code, _, err = run_cli("compress")
    assert code == 130 and "--resume" in err


def test_the_same_command_builds_the_same_weights(run_cli, tmp_path):
    assert model_sha256(load_model("edgekd.models:resnet").model) == model_sha256(load_model("edgekd.models:resnet").model)
    assert model_sha256(load_model("edgekd.models:resnet", seed=1).model) != model_sha256(
        load_model("edgekd.models:resnet").model)
    hashes = set()
    for run in ("a", "b"):
        code, _, err = run_cli("distill", "--student", "edgekd.models:resnet", "--data", "digits", "--no-kd",
                               "--epochs", "1", "--out", str(tmp_path / run))
        assert code == 0, err
        hashes.add(model_sha256(load_checkpoint(tmp_path / run / "student.pt").model))
    assert len(hashes) == 1


def test_builtin_factories_are_the_ones_edgekd_ships():
    from edgekd.factories import BUILTIN_FACTORIES
    from edgekd.models import resolve_factory

    for ref in BUILTIN_FACTORIES:
        assert callable(resolve_factory(ref)), ref
    assert os.environ.get("EDGEKD_TRUSTED_FACTORIES") is None
    # the demo teacher trains for minutes and its cache is itself a checkpoint: a file may not name it
    assert set(BUILTIN_FACTORIES) == {"edgekd.models:resnet", "edgekd.models:mobilenet", "edgekd.models:vit",
                                      "edgekd.hf:sentence_encoder"}


def test_a_checkpoint_of_the_builtin_vit_reloads_and_its_sizes_are_bounded(tmp_path):
    ref = ModelRef("edgekd.models:vit", {"dim": 16, "heads": 2, "layers": 1, "ffn": 32})
    save_checkpoint(tmp_path / "vit.pt", ref.build(), ref=ref)
    assert model_sha256(load_checkpoint(tmp_path / "vit.pt").model) == model_sha256(
        load_checkpoint(tmp_path / "vit.pt").model)
    path = write_payload(tmp_path / "huge.pt", factory="edgekd.models:vit", kwargs={"dim": 10**6})
    with pytest.raises(BadInput, match="dim"):
        load_checkpoint(path)


def test_a_file_naming_the_demo_teacher_is_refused_but_the_user_may_name_it(tmp_path, monkeypatch):
    import edgekd.zoo

    path = write_payload(tmp_path / "teacher.pt", factory="edgekd.zoo:digits_teacher", kwargs={})
    with pytest.raises(BadInput, match="'edgekd.zoo:digits_teacher', which edgekd will not call"):
        load_checkpoint(path)
    # a cache file naming it is refused, not loaded recursively
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    from edgekd.data import load_data
    cached = (edgekd.zoo.cache_dir() / "zoo" /
              f"digits_teacher-w32-{load_data('digits16').sha256[:12]}-digits16-e20-s0.pt")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    with pytest.raises(BadInput, match="digits_teacher"):
        edgekd.zoo.digits_teacher()
    # the user naming it (the recipe's default teacher) still calls it directly
    monkeypatch.setattr(edgekd.zoo, "digits_teacher", lambda **_: resnet(width=4))
    assert load_model("edgekd.zoo:digits_teacher").model is not None


def test_builtin_resnet_block_counts_are_bounded(tmp_path):
    from edgekd.factories import MAX_RESNET_BLOCKS

    for blocks in ([10**12, 1, 1], [1, 0, 1], [1, 1, MAX_RESNET_BLOCKS + 1]):
        path = write_payload(tmp_path / "deep.pt", kwargs={"width": 4, "blocks": blocks})
        with pytest.raises(BadInput, match=r"deep\.pt: argument 'blocks\.\d' of edgekd.models:resnet"):
            load_checkpoint(path)


@pytest.mark.parametrize("factory, shown", [
    ("\x1b[31mos:system\x1b[0m", r"'\x1b[31mos:system\x1b[0m'"),
    ("os:sys\x00tem", r"'os:sys\x00tem'"),
    ("os\u200b:system", r"'os\u200b:system'"),
    ("a:b:c", "'a:b:c'"),
    (" os:system", "' os:system'"),
])
def test_a_malformed_factory_name_is_escaped_and_never_suggested_to_trust(tmp_path, factory, shown):
    path = write_payload(tmp_path / "odd.pt", factory=factory, kwargs={})
    with pytest.raises(BadInput) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert shown in message and "is not a valid factory reference" in message, message
    assert "--trust-factory" not in message and message.isascii() and "\x00" not in message
