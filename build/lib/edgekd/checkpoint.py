"""The edgekd model checkpoint: how to rebuild a model, what was done to it, and its weights.

A checkpoint is a `torch.save`d dict of plain types and tensors, read back with
`weights_only=True`, so loading one never runs code from the file. It records the factory
(`package.module:callable` and its keyword arguments) and the ordered transforms applied since
(structured pruning, fake quantization); stages register how to replay their transform, so
a pruned or quantized model reloads to exactly its trained shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.io import atomic_path
from edgekd.models import ModelRef, call_factory

FORMAT = "edgekd.checkpoint/1"

# name -> fn(model, config, state_dict) -> model; registered by the stage that owns the transform.
_TRANSFORMS: dict[str, Callable[[nn.Module, dict, dict], nn.Module]] = {}


def register_transform(name: str):
    """Decorator: how to replay transform `name` on a freshly built model before loading weights."""

    def wrap(fn):
        _TRANSFORMS[name] = fn
        return fn

    return wrap


@dataclass
class LoadedModel:
    """A model plus what is needed to save it again: its factory and the transforms applied so far."""

    model: nn.Module
    ref: ModelRef
    transforms: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, *, ref: ModelRef, transforms: list[dict] | None = None,
                    meta: dict | None = None) -> Path:
    """Write `model` atomically with everything needed to rebuild it."""
    payload = {
        "format": FORMAT,
        "factory": ref.factory,
        "kwargs": ref.kwargs,
        "transforms": list(transforms or []),
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _import_transform_owners() -> None:
    """Stages register their transforms on import; make sure they are imported."""
    import importlib

    for module in ("edgekd.prune", "edgekd.quant"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def load_checkpoint(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise BadInput(f"{path}: not an edgekd checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInput(f"{path}: not an edgekd checkpoint (no '{FORMAT}' format marker)")
    ref = ModelRef(payload["factory"], dict(payload["kwargs"]))
    model = call_factory(ref.factory, ref.kwargs)
    state = payload["state_dict"]
    _import_transform_owners()
    for step in payload["transforms"]:
        replay = _TRANSFORMS.get(step["name"])
        if replay is None:
            raise BadInput(f"{path}: transform '{step['name']}' is unknown to this edgekd version")
        model = replay(model, step.get("config", {}), state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BadInput(f"{path}: weights do not fit the rebuilt model: {str(err).splitlines()[0][:200]}") from None
    return LoadedModel(model.eval(), ref, list(payload["transforms"]), dict(payload["meta"]))


def model_sha256(model: nn.Module) -> str:
    """Fingerprint of a model's weights (names, dtypes, shapes, values), independent of file format."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# Directory loaders (e.g. Hugging Face model folders) register here: fn(path) -> LoadedModel | None.
_DIRECTORY_LOADERS: list[Callable[[Path], "LoadedModel | None"]] = []


def register_directory_loader(fn):
    """Decorator: a loader that recognises a model directory layout, returning None when it does not."""
    _DIRECTORY_LOADERS.append(fn)
    return fn


def load_model(ref: str | Path) -> LoadedModel:
    """Resolve a model reference: `package.module:factory`, an edgekd checkpoint, or a model directory."""
    path = Path(str(ref))
    if path.is_dir():
        import importlib

        try:
            importlib.import_module("edgekd.hf")
        except ImportError:
            pass
        for loader in _DIRECTORY_LOADERS:
            loaded = loader(path)
            if loaded is not None:
                return loaded
        raise BadInput(f"{path}: not a model directory edgekd can read (expected a Hugging Face config.json)")
    if path.is_file() or path.suffix in (".pt", ".pth", ".ckpt"):
        return load_checkpoint(path)
    model = call_factory(str(ref))
    # A factory that returns trained weights (edgekd.zoo) names the plain architecture to rebuild.
    return LoadedModel(model, getattr(model, "edgekd_ref", ModelRef(str(ref))))
