"""Resumable run directories: which stages finished, and their outputs, written atomically.

`edgekd compress --resume` continues from the last finished stage: a stage counts as done only
once its outputs are on disk and recorded in `state.json`, so nothing half-written is trusted.
Training stages also resume mid-way from their own per-epoch checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.errors import BadInput
from edgekd.io import write_json
from edgekd.models import ModelRef

STATE_FILE = "state.json"


def check_run_folder(out: Path) -> None:
    """Refuse, before any work, a run directory edgekd may not use: a file, or a non-empty folder that
    is not an earlier run (starting over empties an earlier run's folder; never someone else's)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a directory; choose another run directory")
    if out.is_dir() and not (out / STATE_FILE).is_file() and any(out.iterdir()):
        raise BadInput(f"{out}: not empty and not an edgekd run directory (no {STATE_FILE}); "
                       "choose a new or empty run directory")


class RunState:
    def __init__(self, out: Path, *, resume: bool, fingerprint: dict):
        self.out = Path(out)
        self.path = self.out / STATE_FILE
        self.fingerprint = fingerprint
        check_run_folder(self.out)
        previous = self._read() if self.path.is_file() else None
        if resume and previous is not None:
            if previous.get("fingerprint") != fingerprint:
                changed = sorted(k for k in fingerprint if previous.get("fingerprint", {}).get(k) != fingerprint[k])
                raise BadInput(f"{self.path}: cannot resume: {', '.join(changed)} changed since the interrupted run "
                               "(run without --resume to start over)")
            self.stages: dict = previous.get("stages", {})
        else:
            self.stages = {}
            if not resume and self.out.is_dir():  # an earlier run (check_run_folder): its artifacts would mix
                for stale in self.out.iterdir():     # into this run's manifest, so the folder starts empty
                    if stale.is_dir() and not stale.is_symlink():
                        shutil.rmtree(stale)
                    else:
                        stale.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        self._write()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BadInput(f"{self.path}: unreadable run state ({err}); run without --resume to start over") from None

    def _write(self) -> None:
        write_json(self.path, {"fingerprint": self.fingerprint, "stages": self.stages})

    def checkpoint_dir(self, stage: str) -> Path:
        """Where a training stage keeps its resumable per-epoch state."""
        return self.out / "checkpoints" / stage

    def model(self, stage: str, build: Callable[[], tuple[nn.Module, ModelRef, list, dict]]) -> tuple[nn.Module, list, dict]:
        """Run `build` unless `stage` already finished; returns (model, transforms, info)."""
        done = self.stages.get(stage)
        path = self.out / "stages" / f"{stage}.pt"
        if done and path.is_file():
            loaded = load_checkpoint(path)
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
