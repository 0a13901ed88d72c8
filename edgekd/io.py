"""Atomic, durable file output: a reader never sees a half-written artifact, and an artifact that
exists after a power loss is complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from edgekd.errors import BadInput


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    The file's data reach the disk before the rename, and the rename before this returns: without
    the first fsync a power loss can leave `path` in place but empty or truncated (a filesystem may
    commit the rename before the data), without the second the rename itself can be lost.
    """
    target = Path(path)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are shared files
            _fsync(tmp_path, os.O_RDWR)
        os.replace(tmp_path, target)
        if os.name == "posix":  # Windows cannot open a folder; NTFS journals the rename itself
            _fsync(target.parent, os.O_RDONLY)
    finally:
        tmp_path.unlink(missing_ok=True)


def _check_replaceable(target: Path) -> None:
    """Refuse an output path that exists and is not a regular file: the rename would replace a
    symlink, a FIFO, a device node (as root, `--json /dev/full`), a socket or a folder with a file."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    except OSError:  # unreadable parent etc.: the write itself reports it
        return
    if stat.S_ISREG(mode):
        return
    kind = ("a symlink" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise BadInput(f"{target}: is {kind}; edgekd writes its outputs only as regular files and will not "
                   "replace it (give the path of a new or regular file)")


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
