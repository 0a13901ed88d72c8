"""Child process that measures peak memory: `python -m edgekd.bench._memprobe CONFIG FEEDS --mode M`.

Peak RSS is per process, so it is measured in a fresh interpreter that holds nothing but
the runtime and this one model. `--mode baseline` imports the same modules, loads the same
input arrays and initialises the runtime's device, but loads no model: the difference
between the two peaks is the model's own memory. Prints one JSON line: {"peak_rss_mb": ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

from edgekd.runtimes import SessionConfig, open_session, openvino_core

MIB = float(2**20)


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM on Linux, else getrusage's ru_maxrss."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB  # reported in kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes on macOS, kB elsewhere


def _initialise_runtime(config: SessionConfig) -> None:
    """Load the runtime's device plugin, as loading a model would, so the baseline includes it."""
    if config.runtime == "openvino":
        openvino_core().get_property(config.device, "FULL_DEVICE_NAME")
    else:
        import onnxruntime

        onnxruntime.get_available_providers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekd.bench._memprobe")
    parser.add_argument("config", help="SessionConfig as JSON")
    parser.add_argument("feeds", help=".npz with one array per model input")
    parser.add_argument("--mode", choices=("model", "baseline"), default="model")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    config = SessionConfig.from_json(args.config)
    with np.load(args.feeds) as archive:
        feeds = {name: np.ascontiguousarray(archive[name]) for name in archive.files}
    _initialise_runtime(config)
    if args.mode == "model":
        session = open_session(config)
        session.bind(feeds)
        for _ in range(args.runs):
            session.infer()
    print(json.dumps({"mode": args.mode, "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
