"""A pruned model that reloads without the code that defined it: a `torch.export` program (.pt2).

`torch.export` records the forward pass as a graph of ATen ops with the weights beside it, so
loading needs PyTorch only, not the model's Python class. The archive is JSON (graph, tensor
metadata) plus raw tensor bytes, but `torch.export.load` will unpickle payloads an archive marks
as pickled (tensor subclasses, custom objects, an unreadable sample-input file, the legacy
layout), which runs code from the file, and it evaluates the archive's shape expressions with
sympy and `exec`s its recorded guards: Python source from the file. So `load_program` is for
programs you made: it requires `trusted=True`, and still refuses any archive with a pickled
payload. (Validating every expression and guard would mean re-implementing torch's parser; an
opt-in is the honest contract.) edgekd itself only writes `.pt2` files, never loads one.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.io import atomic_path
from edgekd.prune.measure import Inputs

_TENSOR_CONSTANT_PREFIX = "tensor_"


def save_program(*, model: nn.Module, example_inputs: Inputs, path: str | Path) -> Path:
    """Export `model` (eval mode) on `example_inputs` and write the program to `path` atomically."""
    if isinstance(example_inputs, dict):
        args, kwargs = (), example_inputs
    else:
        args, kwargs = (tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)), None
    try:
        program = torch.export.export(model.eval(), args, kwargs)
    except Exception as err:
        raise BadInput(f"cannot export {type(model).__name__} with torch.export: "
                       f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.export.save(program, handle)
    return Path(path)


def _unsafe_payloads(archive: zipfile.ZipFile) -> list[str]:
    """Entries that `torch.export.load` would unpickle."""
    unsafe = []
    for name in archive.namelist():
        if name.endswith((".pt", ".pkl")) and "/sample_inputs/" not in name:
            unsafe.append(name)
        elif name.endswith("_config.json") and "/data/" in name:
            config = json.loads(archive.read(name)).get("config", {})
            for key, payload in config.items():
                constant = "/constants/" in name and not payload.get("path_name", "").startswith(_TENSOR_CONSTANT_PREFIX)
                if payload.get("use_pickle") or constant:
                    unsafe.append(f"{name}:{key}")
        elif "/sample_inputs/" in name and archive.getinfo(name).file_size:
            try:  # torch.export.load retries a failed safe load with full unpickling
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                unsafe.append(name)
    return unsafe


def load_program(*, path: str | Path, trusted: bool = False) -> nn.Module:
    """The module of a program saved by `save_program`; the program needs PyTorch only, not the model's code.
    `trusted=True` says you made the file: loading evaluates expressions and guard code it holds."""
    path = Path(path)
    if not trusted:
        raise BadInput(f"{path}: loading a .pt2 program evaluates shape expressions and guard code stored in it; "
                       "load only programs you made, with load_program(path=..., trusted=True)")
    if not path.is_file():
        raise BadInput(f"{path}: no such program file")
    try:
        with zipfile.ZipFile(path) as archive:
            unsafe = _unsafe_payloads(archive)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not a torch.export program archive ({err})") from None
    if unsafe:
        raise BadInput(f"{path}: refusing to load pickled payloads, which can run code: {', '.join(unsafe[:3])}")
    try:
        return torch.export.load(path).module()
    except Exception as err:
        raise BadInput(f"{path}: not a loadable torch.export program: {type(err).__name__}: "
                       f"{str(err).splitlines()[0][:200]}") from None
