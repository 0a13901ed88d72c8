"""Shared test settings: small thread counts so the suite behaves on a 2-core machine."""

import os

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
