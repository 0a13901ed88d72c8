"""The teacher's top-k logits at every position of the token windows: computed once, memory-mapped.

Full logits are what token-level KD would like and cannot keep: 49152 float16 logits per token are 96 KB, so
700k tokens would be ~67 GB. The top-32 log-probabilities (float16) with their token ids (int32) and one
float32 log-sum-exp of the logits per position are 32 * 2 + 32 * 4 + 4 = 196 bytes per token (~137 MB per
700k tokens); the mass outside the top-k (1 - the sum of their probabilities) is the KD loss's tail bucket.

Log-probabilities, not the logits, are what is stored in float16: SmolLM2-135M's logits reach 39 (top-1
mean 25), where float16's step is 1/32, so its stored top-32 logits put the tail mass off by 1.5e-3 on
average (1.4e-2 at worst, over 512 tokens of text); its log-probabilities lie in [-30, 0] with the large
probabilities near 0, where float16 is finest: tail error 7.8e-5 on average, 2.9e-4 at worst.

An entry lives in `<cache_dir>/<key>/`, the key hashing the teacher's weights, the windows, k and the
temperature, so it is reused across runs and never confused with another teacher or corpus. The arrays are
`.npy` files filled batch by batch; `meta.json` records the settings and how many rows are `filled` (written
only after those rows are flushed to disk), so an interrupted build resumes there. A build ends by writing
the files' sha256 and `complete: true` into meta.json (atomically): a reader trusts only a complete entry whose
files match their recorded shapes, dtypes and digests; anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.checkpoint import model_sha256
from edgekd.errors import BadInput
from edgekd.io import write_json
from edgekd.lm.losses import causal_logits, check_token_ids

FORMAT = "edgekd.lm.topk/1"
META = "meta.json"
FP16_MAX = float(np.finfo(np.float16).max)
MAX_K = 1024


def _layout(n: int, length: int, k: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """file stem -> (dtype, shape) of every array of an entry."""
    return {"log_probs": ("float16", (n, length, k)), "indices": ("int32", (n, length, k)),
            "logsumexp": ("float32", (n, length))}


@dataclass
class TopK:
    """The teacher's top-k per position of `n` windows of `length` tokens (sorted, largest first)."""

    directory: Path
    log_probs: np.ndarray   # float16 [n, length, k]: log-softmax(teacher logits / temperature) at its top-k tokens
    indices: np.ndarray     # int32 [n, length, k]: those tokens
    logsumexp: np.ndarray   # float32 [n, length]: log-sum-exp of all the teacher's logits / temperature
    k: int
    temperature: float

    def batch(self, rows, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows `rows` as the (values = logits / T, indices, logsumexp) float32/int64 tensors topk_kd_loss takes."""
        rows = np.asarray(rows)
        as_tensor = lambda array, dtype: torch.from_numpy(np.asarray(array[rows], dtype=dtype)).to(device)  # noqa: E731
        logsumexp = as_tensor(self.logsumexp, np.float32)
        values = as_tensor(self.log_probs, np.float32) + logsumexp.unsqueeze(-1)
        return values, as_tensor(self.indices, np.int64), logsumexp


def _windows_sha256(windows: np.ndarray) -> str:
    digest = hashlib.sha256(f"{windows.dtype.str}|{windows.shape}".encode())
    digest.update(np.ascontiguousarray(windows).tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_windows(windows) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.dtype.kind not in "iu" or windows.size == 0:
        raise BadInput(f"windows must be a non-empty 2-D integer array [n, seq_len], got {windows.dtype} "
                       f"{windows.shape}")
    return np.ascontiguousarray(windows, dtype=np.int64)


def _read_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _open(directory: Path, meta: dict, mode: str) -> dict[str, np.ndarray] | None:
    """The entry's arrays memory-mapped, or None when any file is missing or not the dtype/shape meta says."""
    arrays = {}
    for stem, (dtype, shape) in _layout(meta["n"], meta["length"], meta["k"]).items():
        try:
            array = np.load(directory / f"{stem}.npy", mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError):  # missing, truncated (shorter than its header says) or not .npy
            return None
        if array.dtype != np.dtype(dtype) or array.shape != shape:
            return None
        arrays[stem] = array
    return arrays


def _create(directory: Path, settings: dict) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {stem: np.lib.format.open_memmap(directory / f"{stem}.npy", mode="w+", dtype=dtype, shape=shape)
              for stem, (dtype, shape) in _layout(settings["n"], settings["length"], settings["k"]).items()}
    write_json(directory / META, {**settings, "filled": 0, "complete": False})
    return arrays


@torch.inference_mode()
def _teacher_topk(teacher: nn.Module, ids: np.ndarray, *, k: int, temperature: float):
    logits = causal_logits(teacher, torch.from_numpy(ids)).float() / temperature
    if k > logits.shape[-1]:
        raise BadInput(f"k={k} is more than the teacher's vocabulary ({logits.shape[-1]} tokens)")
    if not bool(torch.isfinite(logits).all()):
        raise BadInput("the teacher's logits hold NaN/Inf: it cannot be distilled from")
    values, indices = torch.topk(logits, k, dim=-1, sorted=True)
    logsumexp = torch.logsumexp(logits, dim=-1)
    log_probs = values - logsumexp.unsqueeze(-1)
    if float(log_probs.min()) < -FP16_MAX:
        raise BadInput(f"the teacher's log-probabilities at temperature {temperature} reach "
                       f"{float(log_probs.min()):.3g}, past float16's range: raise temperature")
    return log_probs.numpy(), indices.numpy(), logsumexp.numpy()


def build_topk_cache(teacher: nn.Module, windows, *, k: int = 32, temperature: float = 1.0, cache_dir,
                     batch_size: int = 8, resume: bool = True, progress: Callable[[int, int], None] | None = None) -> TopK:
    """The teacher's top-k at `temperature` over every position of `windows` (int [n, seq_len]), from the
    cache when an entry for (teacher weights, windows, k, temperature) is complete, else computed in batches of
    `batch_size` windows (continuing an interrupted build when `resume`). `progress(filled, n)` after each batch.

    The teacher's full logits for one batch are held in float32 (batch_size * seq_len * V * 4 bytes: 200 MB at
    8 x 128 tokens and V = 49152). SmolLM2-135M builds at ~15 s per 1k tokens on 2 shared CPU cores.
    """
    windows = _checked_windows(windows)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadInput(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise BadInput(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
        raise BadInput(f"batch_size must be an integer in [1, 1024], got {batch_size!r}")
    check_token_ids(teacher, windows, "windows")
    n, length = windows.shape
    settings = {"format": FORMAT, "teacher_sha256": model_sha256(teacher), "windows_sha256": _windows_sha256(windows),
                "k": k, "temperature": float(temperature), "n": n, "length": length}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    directory = Path(cache_dir) / key[:24]

    meta = _read_meta(directory)
    same = meta is not None and all(meta.get(name) == value for name, value in settings.items())
    if same and meta.get("complete") is True:
        arrays = _open(directory, meta, "r")
        digests = meta.get("sha256")
        if arrays is not None and isinstance(digests, dict) and all(
                digests.get(stem) == _file_sha256(directory / f"{stem}.npy") for stem in arrays):
            return TopK(directory, arrays["log_probs"], arrays["indices"], arrays["logsumexp"], k, float(temperature))
    arrays = _open(directory, meta, "r+") if same and resume and meta.get("complete") is False else None
    filled = meta.get("filled") if arrays is not None else 0
    if not (isinstance(filled, int) and 0 <= filled <= n):
        arrays, filled = None, 0
    if arrays is None:  # no entry, or one that is tampered with, truncated or not resumed: start over
        arrays = _create(directory, settings)
    if progress is not None:
        progress(filled, n)
    was_training = teacher.training
    teacher.eval()  # dropout off: the cache must be a function of the weights and windows alone
    try:
        for start in range(filled, n, batch_size):
            stop = min(start + batch_size, n)
            log_probs, indices, logsumexp = _teacher_topk(teacher, windows[start:stop], k=k, temperature=temperature)
            arrays["log_probs"][start:stop] = log_probs
            arrays["indices"][start:stop] = indices
            arrays["logsumexp"][start:stop] = logsumexp
            for array in arrays.values():
                array.flush()  # the rows reach the file before meta.json counts them
            write_json(directory / META, {**settings, "filled": stop, "complete": False})
            if progress is not None:
                progress(stop, n)
    finally:
        teacher.train(was_training)
    arrays.clear()  # close the write maps before hashing and reopening read-only
    digests = {stem: _file_sha256(directory / f"{stem}.npy") for stem in _layout(n, length, k)}
    write_json(directory / META, {**settings, "filled": n, "complete": True, "sha256": digests})
    arrays = _open(directory, settings, "r")
    return TopK(directory, arrays["log_probs"], arrays["indices"], arrays["logsumexp"], k, float(temperature))
