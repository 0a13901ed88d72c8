"""The edgekd model checkpoint: how to rebuild a model, what was done to it, and its weights.

A checkpoint is a `torch.save`d dict of plain types and tensors, read back with
`weights_only=True`, so loading one never unpickles code. It records the factory
(`package.module:callable` and its keyword arguments), which is called only if it is one of
edgekd's built-ins or one the user trusts (edgekd.factories), every field is validated before
anything is built, and the ordered transforms applied since
(structured pruning, fake quantization); edgekd.registry wires how each is replayed
(edgekd.plugins.TRANSFORMS), so a pruned or quantized model reloads to exactly its trained shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from edgekd import plugins
from edgekd.errors import NOT_INPUT_ERRORS, BadInput
from edgekd.factories import checked_kwargs, user_trusted
from edgekd.io import atomic_path
from edgekd.models import ModelRef, call_factory

FORMAT = "edgekd.checkpoint/1"

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


def _validated(payload: object, path: Path) -> dict:
    """Every field a checkpoint must have, of the type it must have; BadInput names the first that is not."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInput(f"{path}: not an edgekd checkpoint (no '{FORMAT}' format marker)")
    expected = {"factory": str, "kwargs": dict, "transforms": list, "meta": dict, "state_dict": dict}
    for key, kind in expected.items():
        if not isinstance(payload.get(key), kind):
            found = "missing" if key not in payload else f"a {type(payload[key]).__name__}"
            raise BadInput(f"{path}: field '{key}' must be a {kind.__name__}, found {found}")
    for i, step in enumerate(payload["transforms"]):
        if not (isinstance(step, dict) and isinstance(step.get("name"), str)
                and isinstance(step.get("config", {}), dict)):
            raise BadInput(f"{path}: field 'transforms[{i}]' must be a mapping with a 'name' and a 'config' mapping")
    bad = [k for k, v in payload["state_dict"].items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise BadInput(f"{path}: field 'state_dict' must map names to tensors; '{bad[0]}' does not")
    return payload


def load_checkpoint(path: str | Path, *, trusted_factories: Iterable[str] = ()) -> LoadedModel:
    """Rebuild the model a checkpoint describes. The factory it names is called only if it is one of
    edgekd's built-ins or in `trusted_factories` / $EDGEKD_TRUSTED_FACTORIES (edgekd.factories)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise BadInput(f"{path}: not an edgekd checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    payload = _validated(payload, path)
    trusted = user_trusted(trusted_factories)
    kwargs = checked_kwargs(payload["factory"], payload["kwargs"], trusted=trusted, source=str(path))
    ref = ModelRef(payload["factory"], kwargs)
    model = call_factory(ref.factory, ref.kwargs)
    state = payload["state_dict"]
    for step in payload["transforms"]:
        replay = plugins.TRANSFORMS.get(step["name"])
        if replay is None:
            raise BadInput(f"{path}: transform '{step['name']}' is unknown to this edgekd version")
        try:
            model = replay(model, step.get("config", {}), state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            raise BadInput(f"{path}: transform '{step['name']}' cannot be replayed from its recorded config "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4]) or str(err).splitlines()[0]
        raise BadInput(f"{path}: cannot load the weights into the rebuilt model: {detail[:300]}") from None
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


def load_model(ref: str | Path, *, trusted_factories: Iterable[str] = (), seed: int | None = 0) -> LoadedModel:
    """Resolve a model reference: `package.module:factory` (the user named it, so it is called, under
    `seed`: the same run builds the same initial weights), an edgekd checkpoint (whose factory must be
    trusted: see load_checkpoint), or a model directory."""
    path = Path(str(ref))
    if path.exists():  # a model folder or file another format's loader reads (a .gguf), else a checkpoint
        for loader in plugins.DIRECTORY_LOADERS:
            loaded = loader(path)
            if loaded is not None:
                return loaded
    if path.is_dir():
        raise BadInput(f"{path}: not a model directory edgekd can read (expected a Hugging Face config.json)")
    if path.is_file() or path.suffix in (".pt", ".pth", ".ckpt"):
        return load_checkpoint(path, trusted_factories=trusted_factories)
    model = call_factory(str(ref), seed=seed)
    # A factory that returns trained weights (edgekd.zoo) names the plain architecture to rebuild.
    return LoadedModel(model, getattr(model, "edgekd_ref", ModelRef(str(ref))))
