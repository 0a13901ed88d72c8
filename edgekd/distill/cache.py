"""Offline teacher cache: run the teacher once, keep its outputs and tapped features on disk.

The entry lives in `<root>/<key>/`, the key hashing the teacher's weights, the data and the
collate function, so it is reused across epochs and runs and never confused with another
teacher or dataset. Each array is one `.npy` (float16; float32 only where float16 would
overflow), written to a temporary file and renamed into place, then memory-mapped for reading:
a crash leaves no half-written array behind, and a later run that taps one more layer computes
only the missing one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.data import content_hash
from edgekd.distill.config import describe_setting
from edgekd.distill.inference import Collate, run_batches
from edgekd.errors import BadInput
from edgekd.io import atomic_path, write_json

FP16_MAX = float(np.finfo(np.float16).max)
OUTPUTS = "outputs"


def default_cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekd" / "teacher_cache"


def fingerprint_model(model: nn.Module) -> str:
    """sha256 over the model's class and every state-dict tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _collate_name(collate: Collate | None) -> str:
    """Part of the key: a text collate names its tokenizer and max_length, so cutting texts shorter is a new entry."""
    return "default" if collate is None else describe_setting(collate)


def _file_name(array: str) -> str:
    return f"{array}.npy" if array == OUTPUTS else f"feature.{array.replace('#', '@')}.npy"


@dataclass
class TeacherCache:
    """Memory-mapped teacher outputs (and features by tap name) for every sample of one array."""

    directory: Path
    outputs: np.ndarray
    features: dict[str, np.ndarray]

    def fetch(self, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rows `index` as float32 tensors on `device`."""
        read = lambda array: torch.from_numpy(np.asarray(array[index], dtype=np.float32)).to(device)  # noqa: E731
        return read(self.outputs), {name: read(array) for name, array in self.features.items()}


class _Overflow(Exception):
    def __init__(self, array: str):
        self.array = array


def _write(directory: Path, missing: list[str], teacher: nn.Module, x: np.ndarray, *, collate, batch_size: int,
           dtypes: dict[str, type]) -> None:
    taps = [name for name in missing if name != OUTPUTS]
    with contextlib.ExitStack() as stack:
        files, arrays = {}, {}
        for start, stop, output, features in run_batches(teacher, x, collate=collate, batch_size=batch_size,
                                                         taps=taps, role="teacher"):
            values = {OUTPUTS: output, **features}
            for name in missing:
                value = values[name].float()
                if not bool(torch.isfinite(value).all()):
                    raise BadInput(f"teacher {'outputs' if name == OUTPUTS else f'layer {name!r}'} hold NaN/Inf "
                                   f"on data samples {start}..{stop - 1}")
                if dtypes[name] is np.float16 and float(value.abs().max()) > FP16_MAX:
                    raise _Overflow(name)
                if name not in arrays:
                    files[name] = stack.enter_context(atomic_path(directory / _file_name(name)))
                    arrays[name] = np.lib.format.open_memmap(files[name], mode="w+", dtype=dtypes[name],
                                                              shape=(len(x), *value.shape[1:]))
                if arrays[name].shape[1:] != tuple(value.shape[1:]):
                    raise BadInput(f"teacher {'outputs' if name == OUTPUTS else f'layer {name!r}'} change shape between "
                                   f"batches ({arrays[name].shape[1:]} vs {tuple(value.shape[1:])}), as padded text does; "
                                   "they cannot be cached per sample: set cache=False to run the teacher live")
                arrays[name][start:stop] = value.numpy()
        for array in arrays.values():
            array.flush()
        arrays.clear()  # close the maps before the files are renamed into place


def teacher_cache(teacher: nn.Module, x: np.ndarray, *, taps, collate: Collate | None, batch_size: int,
                  root: Path, build: bool = True) -> TeacherCache:
    """Open the cache entry for (teacher, x, collate), first computing any missing array when `build`.

    With `build=False` (non-writing ranks of a distributed run) a missing array is an error.
    """
    identity = {"teacher_sha256": fingerprint_model(teacher), "data_sha256": content_hash(x),
                "collate": _collate_name(collate), "samples": len(x)}
    key = hashlib.sha256("|".join(map(str, identity.values())).encode()).hexdigest()
    directory = Path(root) / key[:24]
    wanted = [OUTPUTS, *dict.fromkeys(taps)]
    missing = [name for name in wanted if not (directory / _file_name(name)).is_file()]
    if missing and not build:
        raise FileNotFoundError(f"teacher cache {directory} lacks {', '.join(missing)}")
    if missing:
        directory.mkdir(parents=True, exist_ok=True)
        dtypes = {name: np.float16 for name in missing}
        while True:
            try:
                _write(directory, missing, teacher, x, collate=collate, batch_size=batch_size, dtypes=dtypes)
                break
            except _Overflow as overflow:
                dtypes[overflow.array] = np.float32
        write_json(directory / "key.json", identity)
    load = lambda name: _cached_array(directory / _file_name(name), samples=len(x))  # noqa: E731
    return TeacherCache(directory, load(OUTPUTS), {name: load(name) for name in wanted[1:]})


def _cached_array(path: Path, *, samples: int) -> np.ndarray:
    """A cached array, memory-mapped, if it is what `_write` writes: float16/32, one row per sample, finite
    (checked for the outputs-sized arrays a corrupt or foreign file would break training with)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BadInput(f"{path}: a damaged teacher-cache file ({err}); delete it to recompute") from None
    if array.dtype not in (np.float16, np.float32) or array.ndim < 1 or len(array) != samples:
        raise BadInput(f"{path}: not this teacher cache's array (dtype {array.dtype}, shape {array.shape}; "
                       f"expected float16/32 with {samples} rows); delete it to recompute")
    if array.size <= 1 << 24 and not np.isfinite(array).all():
        raise BadInput(f"{path}: holds NaN/Inf; delete it to recompute")
    return array
