"""Pre-allocated input batches: real samples when given, else generated from declared shapes.

Axis 0 is the batch axis and takes the profile's batch size when dynamic; other dynamic axes
need a value (by axis name, e.g. `sequence=128`, or `INPUT:AXIS`). Generated integer inputs
are valid token ids (small, >= 1), attention masks are ones, so a transformer runs its real path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np

from edgekd.bench.artifact import Artifact, InputSpec
from edgekd.errors import BadInput

_TOKEN_ID_RANGE = (1, 100)  # inside every real vocabulary; 0 is often padding

MAX_FEED_ELEMENTS = 1 << 28
"""Most elements one input batch may hold (268M: 1 GiB of float32, 2 GiB of int64). A 4K RGB frame
is 25M, a batch of 64 sequences of 4,096 tokens 0.3M; a bigger feed is a typo (`--dim seq=1e11`)
or a bogus static shape, refused by name before numpy is asked for the memory."""


@dataclass(frozen=True)
class Feeds:
    arrays: dict[str, np.ndarray]
    named_dims: dict[str, int]  # value chosen for each named dynamic axis
    batch_size: int  # samples per inference
    source: str  # "samples" | "generated"
    warnings: tuple[str, ...] = ()

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(a.shape) for name, a in self.arrays.items()}


def build_feeds(*, artifact: Artifact, batch_size: int,
                inputs: Union[np.ndarray, Mapping[str, np.ndarray], None] = None,
                dynamic_dims: Optional[Mapping[str, int]] = None, seed: int = 0) -> Feeds:
    """One batch per model input, C-contiguous and in the model's dtype."""
    dynamic_dims = dict(dynamic_dims or {})
    _check_dynamic_dims(artifact, dynamic_dims)
    warnings = []
    for spec in artifact.inputs:
        if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] != batch_size:
            warnings.append(f"input '{spec.name}' has a fixed batch of {spec.dims[0]}; the profile's batch_size "
                            f"{batch_size} is not applied (export with a dynamic batch axis to use it)")
    if inputs is None:
        rng = np.random.default_rng(seed)
        named: dict[str, int] = {}
        arrays = {}
        for spec in artifact.inputs:
            shape = _resolve_shape(artifact, spec, batch_size, dynamic_dims)
            _check_size(artifact, spec.name, shape)
            named.update({dim: size for dim, size in zip(spec.dims, shape) if isinstance(dim, str)})
            arrays[spec.name] = _generate(spec, shape, rng)
        source = "generated"
    else:
        arrays, named = _from_samples(artifact, batch_size, _samples_by_name(artifact, inputs))
        source = "samples"
    first = next(iter(arrays.values()), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    return Feeds(arrays, named, batch, source, tuple(warnings))


def _dynamic_axes(artifact: Artifact) -> dict[str, str]:
    """Every key that may set a dynamic axis -> a description for messages."""
    keys = {}
    for spec in artifact.inputs:
        for axis, dim in enumerate(spec.dims):
            if not isinstance(dim, int):
                keys[f"{spec.name}:{axis}"] = f"{spec.name}:{axis}"
                if dim:
                    keys[dim] = f"{dim} ({spec.name} axis {axis})"
    return keys


def _check_dynamic_dims(artifact: Artifact, dynamic_dims: dict[str, int]) -> None:
    axes = _dynamic_axes(artifact)
    for key, value in dynamic_dims.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_FEED_ELEMENTS:
            raise BadInput(f"dynamic dim '{key}': size must be a positive integer of at most {MAX_FEED_ELEMENTS:,}, "
                           f"got {value!r}")
        if key not in axes:
            known = ", ".join(sorted(set(axes.values()))) or "none: every axis is fixed"
            raise BadInput(f"{artifact.path}: dynamic dim '{key}' matches no dynamic axis of the model "
                           f"(its dynamic axes: {known})")


def _resolve_shape(artifact: Artifact, spec: InputSpec, batch_size: int, dynamic_dims: dict[str, int]) -> list[int]:
    shape = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif f"{spec.name}:{axis}" in dynamic_dims:
            shape.append(int(dynamic_dims[f"{spec.name}:{axis}"]))
        elif dim and dim in dynamic_dims:
            shape.append(int(dynamic_dims[dim]))
        elif axis == 0:
            shape.append(batch_size)
        else:
            label = f"'{dim}'" if dim else "unnamed"
            key = dim or f"{spec.name}:{axis}"
            raise BadInput(f"{artifact.path}: input '{spec.name}' axis {axis} is dynamic ({label}); give its size, "
                           f"e.g. dynamic_dims={{'{key}': 128}} (CLI: --dim {key}=128), or pass real samples")
    return shape


def _check_size(artifact: Artifact, name: str, shape: list[int]) -> None:
    """Refuse a batch past MAX_FEED_ELEMENTS, naming the input and its shape, before allocating it."""
    elements = math.prod(shape)
    if elements > MAX_FEED_ELEMENTS:
        raise BadInput(f"{artifact.path}: input '{name}' of shape {shape} would hold {elements:,} elements; "
                       f"a benchmark feed may hold at most {MAX_FEED_ELEMENTS:,} (lower --dim or the batch size)")


def _generate(spec: InputSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    name = spec.name.lower()
    if spec.dtype.kind == "f":
        return np.ascontiguousarray(rng.random(shape, dtype=np.float32).astype(spec.dtype))
    if spec.dtype.kind == "b" or "mask" in name:
        return np.ones(shape, dtype=spec.dtype)
    if "token_type" in name or "segment" in name:
        return np.zeros(shape, dtype=spec.dtype)
    if "position" in name and shape:
        return np.ascontiguousarray(np.broadcast_to(np.arange(shape[-1], dtype=spec.dtype), shape))
    return rng.integers(*_TOKEN_ID_RANGE, size=shape).astype(spec.dtype)


def _samples_by_name(artifact: Artifact, inputs) -> dict[str, np.ndarray]:
    names = [spec.name for spec in artifact.inputs]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise BadInput(f"{artifact.path}: sample inputs must match the model's inputs {names}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        return {n: np.asarray(inputs[n]) for n in names}
    if len(names) != 1:
        raise BadInput(f"{artifact.path}: the model has {len(names)} inputs {names}; pass samples as a dict by name")
    return {names[0]: np.asarray(inputs)}


def _from_samples(artifact: Artifact, batch_size: int,
                  samples: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    arrays, named = {}, {}
    for spec in artifact.inputs:
        data = samples[spec.name]
        where = f"{artifact.path}: input '{spec.name}'"
        if data.ndim != len(spec.dims) or data.ndim == 0 or data.shape[0] == 0:
            raise BadInput(f"{where} expects shape {_fmt(spec.dims)}; samples have shape {list(data.shape)}")
        if data.dtype.kind not in "biuf" or (spec.dtype.kind in "biu" and data.dtype.kind == "f"):
            raise BadInput(f"{where} expects {spec.dtype}; samples are {data.dtype}")
        rows = spec.dims[0] if isinstance(spec.dims[0], int) else batch_size
        _check_size(artifact, spec.name, [rows, *data.shape[1:]])
        batch = np.take(data, np.arange(rows) % data.shape[0], axis=0)  # repeat samples if too few
        for axis, dim in enumerate(spec.dims):
            size = batch.shape[axis]
            if axis and isinstance(dim, int) and dim != size:
                raise BadInput(f"{where} expects shape {_fmt(spec.dims)}; samples have shape {list(data.shape)}")
            if isinstance(dim, str):
                if named.setdefault(dim, size) != size:
                    raise BadInput(f"{where}: axis '{dim}' is {size} here but {named[dim]} in another input")
        arrays[spec.name] = np.ascontiguousarray(batch, dtype=spec.dtype)
    return arrays, named


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def parse_dims(items: list[str]) -> dict[str, int]:
    """`--dim` arguments (`sequence=128`, `input_ids:1=128`) as the `dynamic_dims` mapping."""
    dims = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        digits = value.strip().lstrip("0")  # int() of thousands of digits is itself an error
        if not sep or not key or not re.fullmatch(r"[0-9]+", digits):
            raise BadInput(f"--dim '{item}': expected NAME=SIZE or INPUT:AXIS=SIZE with a positive integer SIZE")
        if len(digits) > len(str(MAX_FEED_ELEMENTS)) or int(digits) > MAX_FEED_ELEMENTS:
            raise BadInput(f"--dim '{item}': SIZE may be at most {MAX_FEED_ELEMENTS:,} "
                           "(the most elements of one input)")
        dims[key.strip()] = int(digits)
    return dims
