"""Shared test settings: small thread counts so the suite behaves on a 2-core machine."""

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting on 2 cores


@pytest.fixture
def run_cli(capsys):
    """Run `edgekd ...` in-process and return (exit code, stdout, stderr)."""
    from edgekd.cli import main

    def invoke(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def _fortunes_installed() -> bool:
    from edgekd.data import FORTUNES_DIRS

    return any(d.is_dir() for d in FORTUNES_DIRS)


# Tests on the real English text of Debian's `fortunes` package: `make test` installs it where it
# runs as root (.ci/system-deps); elsewhere these skip and say why.
needs_fortunes = pytest.mark.skipif(not _fortunes_installed(),
                                    reason="Debian's fortunes package is not installed (make test installs it as root)")


@contextlib.contextmanager
def benchmark_script(name: str):
    """benchmarks/NAME.py loaded as a module (registered while in use: dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
