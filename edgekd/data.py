"""Datasets: named specs in `calibration/`, `.npz` arrays and text files, split deterministically.

Every dataset becomes a `Dataset` of numpy arrays with fixed train/val/test splits and a content
hash, so a run records exactly which data snapshot it saw. Labels of -1 mark unlabeled samples:
they are distilled from the teacher alone.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekd.corpus import fortune_records, read_english
from edgekd.errors import BadInput
from edgekd.targets import bundled_dir, check_regular_file, read_bounded, read_yaml, validation_message

CALIBRATION_DIR = bundled_dir("calibration")
UNLABELED = -1

SEED_LIMIT = 2**32
"""Seeds are integers in [0, SEED_LIMIT): the range every seeded library takes (numpy's legacy
seeding stops at 2**32 - 1, torch at 2**64 - 1, negatives fail in numpy), so a seed that would
only fail deep inside a run is refused where it is written."""

MAX_NPZ_BYTES = 4 << 30
"""Largest .npz dataset (4 GiB), on disk and in what its arrays 'x' and 'y' claim to decompress to
(read from their headers before loading): the arrays load whole and the split copies them, so the
peak is about three times this; a bigger claim is a wrong or corrupt file, not an edge dataset."""

MAX_NPZ_LOADED_BYTES = 2 << 30
"""Most memory (2 GiB) the arrays of an .npz may occupy once loaded and widened, from their headers
before any is read: integer arrays become int64 (8 bytes an element), float ones float32 (4), and a
narrower array on disk still occupies this much once loaded (a 263 KB compressed file of uint8 zeros
widens to 4 GiB). With the original and the split's copy the peak stays near three times this, well
inside a 24 GiB host."""

MAX_TEXT_BYTES = 64 << 20
"""Largest text dataset (64 MiB, about a million sentences): it loads whole as Python strings,
and a bigger file is more likely a log or a binary than a corpus for distilling an encoder."""

MAX_LINE_CHARS = 10_000
"""Longest text sample: encoders truncate at a few hundred tokens, so a longer line is a wrong
file (minified JSON, base64); it is refused with its line number rather than silently cut."""

MAX_RESIZE = 256
"""Largest `options.resize` of the digits loader: 1,797 images at 256x256 are 0.5 GB of float32."""


@dataclass(frozen=True)
class Dataset:
    """Fixed splits of one data snapshot. `test_sources`, for a corpus of several sources (the
    `english` spec), names the source of each test sample, so a benchmark can report held-out
    figures per source; None for a single-source dataset."""

    name: str
    task: Literal["classification", "embedding"]
    x_train: np.ndarray
    y_train: Optional[np.ndarray]  # -1 marks an unlabeled sample
    x_val: np.ndarray
    y_val: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]
    num_classes: Optional[int]
    sha256: str
    provenance: dict = field(default_factory=dict)
    test_sources: Optional[np.ndarray] = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of array inputs; () for text."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_text(self) -> bool:
        return self.x_train.dtype.kind in ("U", "S", "O")

    def with_labeled_fraction(self, fraction: float, *, seed: int = 0) -> "Dataset":
        """Keep labels on `fraction` of the training set (stratified), mark the rest unlabeled."""
        if not 0 < fraction <= 1:
            raise BadInput(f"labeled_fraction must be in (0, 1], got {fraction}")
        if self.y_train is None or fraction == 1:
            return self
        rng = np.random.default_rng(seed)
        y = self.y_train.copy()
        for cls in np.unique(y[y >= 0]):
            idx = np.flatnonzero(y == cls)
            drop = rng.permutation(idx)[max(1, round(len(idx) * fraction)):]
            y[drop] = UNLABELED
        return replace(self, y_train=y)


class _Split(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "_Split":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave no "
                             "training data (their sum must be < 1)")
        return self


class DatasetSpec(BaseModel):
    """A `calibration/*.yaml` file: where the data comes from, not the data itself."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str = ""
    loader: Literal["sklearn-digits", "text-fortunes", "text-english", "npz", "text-lines"]
    path: Optional[str] = None
    task: Literal["classification", "embedding"]
    provenance: dict = Field(default_factory=dict)
    options: dict = Field(default_factory=dict)
    split: _Split = _Split()
    labeled_fraction: float = Field(default=1.0, gt=0, le=1)
    content_sha256: Optional[str] = None
    max_samples: Optional[int] = Field(default=None, ge=10)


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over each array's dtype, shape and values. Text hashes its strings under the object
    dtype's tag whether it is held as objects or fixed-width 'U', so the same texts give one digest."""
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            continue
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind in ("U", "O"):
            digest.update(str((np.dtype(object).str, arr.shape)).encode())
            digest.update("\n".join(map(str, arr.ravel())).encode())
        else:
            digest.update(str((arr.dtype.str, arr.shape)).encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def _text_array(texts: list[str]) -> np.ndarray:
    """Texts as a 1-D object array of str: a fixed-width 'U' array would pad every text to the
    longest one at 4 bytes a character (one 1M-character line made a 1 MB file ask for 7 GiB)."""
    return np.array(texts, dtype=object)


@dataclass(frozen=True)
class _Loaded:
    """What a spec's loader read. A corpus of several sources also names each sample's source and
    document, so the split keeps documents whole, plus per-source provenance."""

    x: np.ndarray
    y: Optional[np.ndarray]
    sha256: str
    sources: Optional[np.ndarray] = None
    documents: Optional[np.ndarray] = None
    provenance: dict = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> "_Loaded":
        """The samples at `keep` (a spec's max_samples), with their sources and documents."""
        pick = (lambda a: None if a is None else a[keep])
        return replace(self, x=self.x[keep], y=pick(self.y), sources=pick(self.sources), documents=pick(self.documents))


def _split(x: np.ndarray, y: Optional[np.ndarray], split: _Split, source: str):
    n = len(x)
    order = np.random.default_rng(split.seed).permutation(n)
    n_test = max(1, round(n * split.test_fraction))
    n_val = max(1, round(n * split.val_fraction))
    if n - n_test - n_val < 1:
        raise BadInput(f"{source}: key 'split': val_fraction {split.val_fraction} and test_fraction "
                       f"{split.test_fraction} leave no training sample of {n}")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    pick = (lambda a, i: None if a is None else a[i])
    return x[train], pick(y, train), x[val], pick(y, val), x[test], pick(y, test)


def _split_by_document(sources: np.ndarray, documents: np.ndarray, split: _Split,
                       source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test such that no document has samples in two splits, so a
    held-out text never shares a document (a Bible book, a fortunes file) with a training text.
    Each source's documents, shuffled by the seed, fill test and then val up to their fractions of
    that source's samples, the rest is train: every source is held out in proportion, and each
    split is shuffled so that its first samples mix the sources."""
    rng = np.random.default_rng(split.seed)
    parts: tuple[list, list, list] = ([], [], [])  # test, val, train: the order they are filled in
    for name in sorted(set(sources)):
        members = np.flatnonzero(sources == name)
        names, document_of = np.unique(documents[members], return_inverse=True)
        sizes = np.bincount(document_of)
        limits = (split.test_fraction * len(members), (split.test_fraction + split.val_fraction) * len(members))
        part_of = np.empty(len(names), dtype=np.int64)
        held = [0, 0, 0]  # documents in each part
        part, filled = 0, 0
        for document in rng.permutation(len(names)):
            # on to the next part once this one holds a document and this one would pass its limit by
            # more than half of itself: each part ends within half a document of its fraction
            while part < 2 and held[part] and filled + sizes[document] / 2 > limits[part]:
                part += 1
            part_of[document] = part
            held[part] += 1
            filled += sizes[document]
        if not all(held):
            raise BadInput(f"{source}: source '{name}' has {len(names)} document(s), too few to hold out "
                           "whole documents for both val and test")
        for part, indices in enumerate(parts):
            indices.append(members[part_of[document_of] == part])
    train, val, test = (rng.permutation(np.concatenate(indices)) for indices in reversed(parts))
    return train, val, test


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()


def _load_sklearn_digits(spec: DatasetSpec, source: str) -> _Loaded:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_raw, y = digits.data, digits.target.astype(np.int64)
    raw_hash = content_hash(x_raw.astype(np.float64), y)
    x = (x_raw.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    size = spec.options.get("resize")
    if size is not None:
        if not isinstance(size, int) or not 8 <= size <= MAX_RESIZE:
            raise BadInput(f"{source}: key 'options.resize' must be an integer in [8, {MAX_RESIZE}], got {size!r}")
        x = _resize(x, size)
    return _Loaded(x, y, raw_hash)


FORTUNES_DIRS = (Path("/usr/share/games/fortunes"), Path("/usr/share/fortunes"))


def _load_fortunes(spec: DatasetSpec, source: str) -> _Loaded:
    directory = next((d for d in FORTUNES_DIRS if d.is_dir()), None)
    if directory is None:
        raise BadInput(
            f"{source}: Debian's 'fortunes' package is not installed "
            "(install it with: sudo apt-get install -y fortunes)"
        )
    texts = {" ".join(record.replace("%", " ").split()) for _, record in fortune_records(directory)}
    x = _text_array(sorted(text for text in texts if 20 <= len(text) <= 600))
    return _Loaded(x, None, content_hash(x))


def _load_english(spec: DatasetSpec, source: str) -> _Loaded:
    """The `english` corpus (`edgekd.corpus`) as arrays: hashed whole and per source, each text
    with its source and document for the split that holds out whole documents."""
    corpus = read_english(spec.options, source)
    x, sources, documents = (_text_array(a) for a in (corpus.texts, corpus.sources, corpus.documents))
    provenance = {}
    for name, described in corpus.provenance.items():
        own = sources == name
        provenance[name] = {**described, "sha256": content_hash(x[own], documents[own])}
    return _Loaded(x, None, content_hash(x, sources, documents), sources=sources, documents=documents,
                   provenance={"sources": provenance})


def _npz_header(archive, name: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array `name` of an open .npz, from its .npy header, without loading it."""
    member = f"{name}.npy" if f"{name}.npy" in archive.zip.namelist() else name
    with archive.zip.open(member) as file:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(file)
        else:  # 3.0 only adds UTF-8 field names of structured arrays, which are no dataset here
            raise BadInput(f"{path}: array '{name}' is in .npy format {version[0]}.{version[1]}; expected 1.0 or 2.0")
    return tuple(shape), dtype


def claimed_npz_bytes(archive, name: str, path: Path) -> int:
    """What array `name` of an open .npz decompresses to, from its .npy header (shape x item size),
    without loading it: a zip member can claim any shape."""
    shape, dtype = _npz_header(archive, name, path)
    return math.prod(shape) * dtype.itemsize


def loaded_npz_bytes(archive, name: str, path: Path) -> int:
    """What array `name` of an open .npz occupies once loaded and widened (integers to int64, floats
    to float32), from its header: elements x the larger of its item size and the widened one."""
    shape, dtype = _npz_header(archive, name, path)
    widened = {"i": 8, "u": 8, "f": 4}.get(dtype.kind, 0)
    return math.prod(shape) * max(dtype.itemsize, widened)


def check_npz_memory(archive, names: list[str], path: Path, *, kind: str) -> None:
    """Refuse, before any array is read, an .npz whose arrays `names` claim more than MAX_NPZ_BYTES
    or would occupy more than MAX_NPZ_LOADED_BYTES once loaded and widened."""
    listed = " and ".join(repr(n) for n in names)
    claimed = sum(claimed_npz_bytes(archive, name, path) for name in names)
    if claimed > MAX_NPZ_BYTES:
        raise BadInput(f"{path}: arrays {listed} decompress to {claimed / 2**30:,.1f} GiB; {kind} may hold "
                       f"at most {MAX_NPZ_BYTES >> 30} GiB")
    loaded = sum(loaded_npz_bytes(archive, name, path) for name in names)
    if loaded > MAX_NPZ_LOADED_BYTES:
        raise BadInput(f"{path}: arrays {listed} occupy {loaded / 2**30:,.1f} GiB once loaded (integers as "
                       f"int64, floats as float32); {kind} may occupy at most "
                       f"{MAX_NPZ_LOADED_BYTES / 2**30:g} GiB")


def _load_npz(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    check_regular_file(path, max_bytes=MAX_NPZ_BYTES, kind="an .npz dataset")
    if not zipfile.is_zipfile(path):  # numpy would blame "pickled data" for any non-zip file
        raise BadInput(f"{path}: not an .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise BadInput(f"{path}: an .npz dataset needs an array named 'x' (found: {', '.join(archive.files) or 'none'})")
            names = ["x", "y"] if "y" in archive.files else ["x"]
            check_npz_memory(archive, names, path, kind="an .npz dataset")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BadInput(f"{path}: not a readable .npz archive: {err}") from None
    if x.ndim == 0:
        raise BadInput(f"{path}: array 'x' is a single value; expected samples along its first axis")
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
            raise BadInput(f"{path}: array 'x' has NaN or Inf values in {bad} sample(s)")
    elif x.dtype.kind in ("i", "u"):
        x = x.astype(np.int64)
    else:
        raise BadInput(f"{path}: array 'x' has dtype {x.dtype}; expected a float or integer array")
    if y is not None:
        if y.dtype.kind not in ("i", "u") or y.ndim != 1:
            raise BadInput(f"{path}: array 'y' must be 1-D integer class labels, got dtype {y.dtype} shape {y.shape}")
        if len(y) != len(x):
            raise BadInput(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
        y = y.astype(np.int64)
    return x, y


def _load_text_lines(path: Path) -> np.ndarray:
    """One sample per non-empty line; a line past MAX_LINE_CHARS is refused, naming it."""
    try:
        text = read_bounded(path, max_bytes=MAX_TEXT_BYTES, kind="a text dataset").decode()
    except UnicodeDecodeError as err:
        raise BadInput(f"{path}: cannot read as UTF-8 text: {err}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if len(line) > MAX_LINE_CHARS:
            raise BadInput(f"{path}: line {number} has {len(line):,} characters; a text sample (one line) "
                           f"may have at most {MAX_LINE_CHARS:,}")
        if line:
            lines.append(line)
    return _text_array(lines)


_SPEC_LOADERS: dict[str, Callable] = {
    "sklearn-digits": _load_sklearn_digits,
    "text-fortunes": _load_fortunes,
    "text-english": _load_english,
}


def _from_arrays(name, x, y, *, split: _Split, sha: str, provenance: dict, source: str,
                 sources: Optional[np.ndarray] = None, documents: Optional[np.ndarray] = None) -> Dataset:
    if len(x) == 0:
        raise BadInput(f"{source}: the dataset is empty")
    if len(x) < 10:
        raise BadInput(f"{source}: only {len(x)} samples; at least 10 are needed to split train/val/test")
    task = "classification" if y is not None else "embedding"
    num_classes = int(y.max()) + 1 if y is not None else None
    if y is not None and y.min() < UNLABELED:
        raise BadInput(f"{source}: labels must be >= 0 (or -1 for unlabeled), found {int(y.min())}")
    if y is not None:
        _require_two_classes(y, source)
    if documents is None:
        parts = _split(x, y, split, source)
        return Dataset(name, task, *parts, num_classes=num_classes, sha256=sha, provenance=provenance)
    train, val, test = _split_by_document(sources, documents, split, source)
    pick = (lambda a, i: None if a is None else a[i])
    return Dataset(name, task, x[train], pick(y, train), x[val], pick(y, val), x[test], pick(y, test),
                   num_classes=num_classes, sha256=sha, provenance=provenance, test_sources=sources[test])


def _require_two_classes(y: np.ndarray, source: str) -> None:
    """A classifier needs two labelled classes; with one, training "works" and validates at 0.0.
    (`with_labeled_fraction` keeps at least one label per class, so it cannot drop below two.)"""
    classes = np.unique(y[y >= 0])
    if len(classes) < 2:
        found = f"only class {int(classes[0])}" if len(classes) else "no labelled sample"
        raise BadInput(f"{source}: the labels hold {found}; classification needs at least 2 classes "
                       "(leave the labels out for an unlabeled, embedding dataset)")


def _spec_data_path(spec_file: Path, written: str, source: str) -> Path:
    """Where a spec's `path` points: relative to the folder of the spec file, or absolute.

    A spec the user wrote may point anywhere, outside its folder included (the user chose it); a
    built-in spec (in CALIBRATION_DIR) only inside that folder. The data is read only from a
    regular file either way, so a path (or a symlink) to a device is refused when it is read.
    """
    folder = spec_file.parent.resolve()
    data_path = (folder / written).resolve()
    builtin = CALIBRATION_DIR.resolve()
    if folder == builtin and not data_path.is_relative_to(builtin):
        raise BadInput(f"{source}: key 'path': '{written}' leaves the built-in calibration folder {builtin}")
    return data_path


def load_spec(path: Path) -> Dataset:
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{source}: a dataset spec must be a YAML mapping")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as err:
        raise BadInput(validation_message(source, err)) from None
    if spec.loader in _SPEC_LOADERS:
        loaded = _SPEC_LOADERS[spec.loader](spec, source)
    else:
        if not spec.path:
            raise BadInput(f"{source}: key 'path' is required for loader '{spec.loader}'")
        data_path = _spec_data_path(path, spec.path, source)
        x, y = _load_npz(data_path) if spec.loader == "npz" else (_load_text_lines(data_path), None)
        loaded = _Loaded(x, y, content_hash(x, y))
    if spec.content_sha256 and spec.content_sha256 != loaded.sha256:
        raise BadInput(
            f"{source}: key 'content_sha256': the data on this machine hashes to {loaded.sha256[:16]}..., "
            f"not {spec.content_sha256[:16]}... (the snapshot changed)"
        )
    if spec.max_samples and len(loaded.x) > spec.max_samples:
        keep = np.sort(np.random.default_rng(spec.split.seed).permutation(len(loaded.x))[: spec.max_samples])
        loaded = loaded.subset(keep)
    provenance = {"spec": spec.name, "loader": spec.loader, **spec.provenance, "options": spec.options,
                  **loaded.provenance}
    dataset = _from_arrays(spec.name, loaded.x, loaded.y, split=spec.split, sha=loaded.sha256, provenance=provenance,
                           source=source, sources=loaded.sources, documents=loaded.documents)
    if spec.task != dataset.task:
        has = "has" if loaded.y is not None else "has no"
        raise BadInput(f"{source}: key 'task': '{spec.task}' but the data {has} labels")
    return dataset.with_labeled_fraction(spec.labeled_fraction, seed=spec.split.seed)


def check_data_ref(ref: str | Path) -> Path:
    """The file `load_data(ref)` reads (a spec YAML, by name or path, or a data file), checked
    cheaply: it exists and is a regular file. Nothing is loaded, so a run can fail on a wrong
    `--data` before any model work starts."""
    ref_str = str(ref)
    path = Path(ref_str)
    named = CALIBRATION_DIR / f"{ref_str}.yaml"
    if path.suffix not in (".yaml", ".yml") and not path.exists() and named.is_file():
        return named
    if path.is_dir():
        raise BadInput(f"data '{ref_str}': is a directory; give a dataset spec, an .npz or a text file")
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CALIBRATION_DIR.glob("*.yaml")))
        raise BadInput(f"data '{ref_str}': no such file or dataset spec (specs: {known})")
    if not path.is_file():
        raise BadInput(f"data '{ref_str}': not a regular file (a device or pipe); give a dataset spec, "
                       "an .npz or a text file")
    return path


def load_data(ref: str | Path, *, labeled_fraction: float | None = None) -> Dataset:
    """A dataset from a spec name in `calibration/`, a spec YAML, an `.npz`, or a text file."""
    path = check_data_ref(ref)
    if path.suffix in (".yaml", ".yml"):
        dataset = load_spec(path)
    else:
        x, y = _load_npz(path) if path.suffix == ".npz" else (_load_text_lines(path), None)
        dataset = _from_arrays(path.stem, x, y, split=_Split(), sha=content_hash(x, y),
                               provenance={"file": str(path.resolve())}, source=str(path))
    if labeled_fraction is not None:
        dataset = dataset.with_labeled_fraction(labeled_fraction)
    return dataset
