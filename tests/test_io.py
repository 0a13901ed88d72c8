"""edgekd.io: atomic, durable artifact writes."""

import json
import os
import stat

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
