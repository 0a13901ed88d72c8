"""Peak memory of a model, measured in isolated child processes (see `_memprobe`).

The benchmarking process itself has imported torch, run other sessions and kept their pages,
so its own RSS says nothing about one model. Two fresh children are started instead: one
loads and runs the model, one only imports the runtime; the model's figure is the difference.
ONNX Runtime's CPU memory arena is turned off in the child because it keeps freed blocks and
grows in chunks, which would report the allocator's policy instead of the model's needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgekd.runtimes import SessionConfig

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `edgekd/`


class MemoryProbeFailed(RuntimeError):
    """The child process could not measure (it crashed, timed out or printed no figure)."""


@dataclass(frozen=True)
class MemoryFigures:
    model_mb: Optional[float]  # the model's peak increment over a runtime-only process; None: not measured
    process_peak_mb: float  # peak RSS of the process that ran the model
    baseline_mb: float  # peak RSS of the runtime-only process


def measure_peak_memory(*, config: SessionConfig, feeds: dict[str, np.ndarray], runs: int = 5,
                        timeout_s: float = 600.0) -> MemoryFigures:
    """Load and run the model `runs` times in a child process; compare with a baseline child.

    A model process that peaks below the baseline (noise larger than a tiny model, or a runtime
    that allocated less with the model than without) measured nothing about the model, so its
    figure is None, never a 0 MB that would pass any memory SLO.
    """
    config = replace(config, cpu_mem_arena=False)
    with tempfile.TemporaryDirectory(prefix="edgekd-mem-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        baseline = _run_child(config, feeds_path, "baseline", runs, timeout_s)
        process_peak = _run_child(config, feeds_path, "model", runs, timeout_s)
    increment = process_peak - baseline
    return MemoryFigures(increment if increment >= 0 else None, process_peak, baseline)


def _run_child(config: SessionConfig, feeds_path: Path, mode: str, runs: int, timeout_s: float) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "edgekd.bench._memprobe", config.to_json(), str(feeds_path),
               "--mode", mode, "--runs", str(runs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise MemoryProbeFailed(f"the {mode} memory probe took longer than {timeout_s:.0f} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise MemoryProbeFailed(f"the {mode} memory probe failed: {detail}")
    return float(json.loads(lines[-1])["peak_rss_mb"])
