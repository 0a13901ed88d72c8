"""edgekd.io: atomic, durable artifact writes."""

import json
import os
import stat
from pathlib import Path

import pytest

from edgekd import io


@pytest.fixture
def synced(monkeypatch):
    """Record what each os.fsync flushed: ("file", name) or ("folder", path), in order, beside the renames."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        events.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc (Linux)")
def test_atomic_path_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, synced):
    target = tmp_path / "sub" / "model.bin"
    with io.atomic_path(target) as tmp:
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"
    assert len(synced) == 3
    (kind, flushed), rename, folder = synced
    assert kind == "file" and os.path.basename(flushed).startswith(".model.bin.") and flushed.endswith(".tmp")
    assert rename == ("rename", str(target)) and folder == ("folder", str(target.parent))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc (Linux)")
def test_write_json_is_flushed_like_any_artifact(tmp_path, synced):
    path = io.write_json(tmp_path / "report.json", {"verdict": "pass"})
    assert json.loads(path.read_text()) == {"verdict": "pass"}
    assert [kind for kind, _ in synced] == ["file", "rename", "folder"]
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_failed_block_leaves_neither_the_artifact_nor_a_temporary_file_and_flushes_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    (tmp_path / "model.onnx").write_bytes(b"the older, complete artifact")
    with pytest.raises(RuntimeError, match="export failed"):
        with io.atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert calls == []
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"the older, complete artifact"


def _special_targets(tmp_path):
    """Paths that exist but are not regular files: a rename over them would replace them."""
    real = tmp_path / "real.json"
    real.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    targets = {"a symlink": [link, dangling], "a directory": [folder]}
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        targets["a FIFO"] = [fifo]
    if os.path.exists("/dev/null"):
        targets["a device"] = [Path("/dev/null")]
    return real, targets


def test_an_output_that_is_not_a_regular_file_is_refused_and_left_as_it_was(tmp_path):
    from edgekd.errors import BadInput

    real, targets = _special_targets(tmp_path)
    for kind, paths in targets.items():
        for path in paths:
            before = os.lstat(path)
            with pytest.raises(BadInput, match=f"{path}: is {kind}; edgekd writes its outputs only as regular files"):
                io.write_json(path, {"verdict": "pass"})
            after = os.lstat(path)
            assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), path
    assert real.read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_a_regular_file_is_still_replaced(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    io.write_json(path, {"verdict": "pass"})
    assert json.loads(path.read_text()) == {"verdict": "pass"}


def test_the_bench_json_flag_replaces_neither_a_symlink_nor_a_fifo(tmp_path, run_cli):
    import torch

    from edgekd.models import resnet

    model = tmp_path / "tiny.onnx"
    torch.onnx.export(resnet(width=4).eval(), (torch.zeros(1, 1, 8, 8),), str(model), input_names=["x"],
                      output_names=["logits"], dynamo=False)
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    fifo = tmp_path / "fifo.json"
    outputs = [link] + ([fifo] if hasattr(os, "mkfifo") and not os.mkfifo(fifo) else [])
    for out in outputs:
        target = Path(__file__).resolve().parent.parent / "targets" / "x86-cpu-onnxruntime.yaml"
        code, _, err = run_cli("bench", str(model), "--target", str(target), "--json", str(out), "--time", "0.1", "--iterations", "2",
                               "--warmup", "1", "--no-memory")
        assert code == 2 and "Traceback" not in err and str(out) in err.replace("\n", ""), err
    assert link.is_symlink() and not (tmp_path / "elsewhere.json").exists()
    assert not fifo.exists() or stat.S_ISFIFO(os.lstat(fifo).st_mode)
