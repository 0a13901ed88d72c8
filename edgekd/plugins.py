"""The tables of pluggable pieces: checkpoint transforms, model-directory loaders and model families.

They are filled in one place, `edgekd.registry` (the composition root), never by a module
registering itself on import, so what a checkpoint can replay does not depend on which modules
happened to be imported. This module imports nothing heavy: `import edgekd` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

# name -> fn(model, config, state_dict) -> model: how to replay a transform on a freshly built model.
TRANSFORMS: dict[str, Callable[[Any, dict, dict], Any]] = {}
# fn(path) -> LoadedModel | None: loaders that recognise a model folder layout or file format (None: not theirs).
DIRECTORY_LOADERS: list[Callable[[Path], Any]] = []
# fn() -> a ModelFamily subclass, most specific first (edgekd.families.family_for asks each in turn).
FAMILIES: list[Callable[[], type]] = []


def register_transform(name: str, replay: Callable[[Any, dict, dict], Any]) -> None:
    TRANSFORMS[name] = replay


def register_directory_loader(loader: Callable[[Path], Any]) -> None:
    if loader not in DIRECTORY_LOADERS:
        DIRECTORY_LOADERS.append(loader)


def register_family(load: Callable[[], type]) -> None:
    if load not in FAMILIES:
        FAMILIES.append(load)
