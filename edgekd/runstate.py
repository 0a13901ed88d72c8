"""Resumable run directories: which stages finished, and their outputs, written atomically.

`edgekd compress --resume` continues from the last finished stage: a stage counts as done only
once its outputs are on disk and recorded in `state.json`, so nothing half-written is trusted.
Training stages also resume mid-way from their own per-epoch checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.errors import BadInput
from edgekd.io import write_json
from edgekd.models import ModelRef

STATE_FILE = "state.json"
RUN_FORMAT = "edgekd.run/1"  # marks a folder edgekd made; only such a folder is ever emptied


def read_state(out: Path) -> dict | None:
    """The run state in `out` (None when there is none); BadInput when it is not edgekd's or is unreadable."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"{path}: not a readable edgekd run state ({err})") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise BadInput(f"{path}: not an edgekd run state (no '{RUN_FORMAT}' format marker); edgekd only reuses "
                       "folders it made itself: choose a new or empty run directory")
    if not isinstance(state.get("fingerprint"), dict) or not isinstance(state.get("stages"), dict) or not all(
            isinstance(done, dict) and isinstance(done.get("info"), dict) for done in state["stages"].values()):
        raise BadInput(f"{path}: malformed edgekd run state (fields 'fingerprint' and 'stages' must be mappings "
                       "of finished stages)")
    return state


def check_run_folder(out: Path) -> None:
    """Refuse, before any work, a run directory edgekd may not use: a file, or a non-empty folder that
    edgekd did not make (no state.json with edgekd's format marker)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a directory; choose another run directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / STATE_FILE).is_file():
            raise BadInput(f"{out}: not empty and not an edgekd run directory (no {STATE_FILE}); "
                           "choose a new or empty run directory")
        read_state(out)


def _written_by_edgekd(entry: Path) -> bool:
    """What a run writes at its top level (RUN_ENTRIES, and per-variant export evidence); a file the
    user put in the folder is none of these and stays."""
    return entry.name in RUN_ENTRIES or (entry.name.endswith(".export.json") and entry.is_file())


# Everything a compress run writes directly into its folder.
RUN_ENTRIES = frozenset({STATE_FILE, "stages", "checkpoints", "teacher_cache", "variants", "openvino", "rejected",
                         "hf", "plots", "model.onnx", "report.json", "report.md", "report.html", "manifest.json",
                         "openvino_model.xml", "openvino_model.bin"})  # the last two: a causal LM's IR


class RunState:
    def __init__(self, out: Path, *, resume: bool, fingerprint: dict, trusted_factories: Iterable[str] = ()):
        self.out = Path(out)
        self.path = self.out / STATE_FILE
        self.fingerprint = fingerprint
        self.trusted_factories = frozenset(trusted_factories)
        check_run_folder(self.out)
        previous = read_state(self.out)
        if resume and previous is not None:
            if previous["fingerprint"] != fingerprint:
                changed = sorted(k for k in fingerprint if previous["fingerprint"].get(k) != fingerprint[k])
                raise BadInput(f"{self.path}: cannot resume: {', '.join(changed)} changed since the interrupted run "
                               "(run without --resume to start over)")
            self.stages: dict = previous["stages"]
        else:
            self.stages = {}
            if previous is not None:  # an earlier run of edgekd's: its artifacts would mix into this run's
                self._clear()          # manifest, so what it wrote goes; anything else stays
        self.out.mkdir(parents=True, exist_ok=True)
        self._write()

    def _clear(self) -> None:
        for stale in self.out.iterdir():
            if not _written_by_edgekd(stale):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()

    def _write(self) -> None:
        write_json(self.path, {"format": RUN_FORMAT, "fingerprint": self.fingerprint, "stages": self.stages})

    def checkpoint_dir(self, stage: str) -> Path:
        """Where a training stage keeps its resumable per-epoch state."""
        return self.out / "checkpoints" / stage

    def model(self, stage: str, build: Callable[[], tuple[nn.Module, ModelRef, list, dict]]) -> tuple[nn.Module, list, dict]:
        """Run `build` unless `stage` already finished; returns (model, transforms, info)."""
        done = self.stages.get(stage)
        path = self.out / "stages" / f"{stage}.pt"
        if done and path.is_file():
            loaded = load_checkpoint(path, trusted_factories=self.trusted_factories)
            return loaded.model, loaded.transforms, done["info"]
        model, ref, transforms, info = build()
        save_checkpoint(path, model, ref=ref, transforms=transforms, meta={"stage": stage})
        self.stages[stage] = {"info": info}
        self._write()
        return model, transforms, info

    def value(self, stage: str, compute: Callable[[], dict]) -> dict:
        """Run `compute` (a JSON-able result) unless `stage` already finished."""
        if stage in self.stages:
            return self.stages[stage]["info"]
        info = compute()
        self.stages[stage] = {"info": info}
        self._write()
        return info
