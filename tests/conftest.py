"""Shared test settings: small thread counts so the suite behaves on a 2-core machine."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture
def run_cli(capsys):
    """Run `edgekd ...` in-process and return (exit code, stdout, stderr)."""
    from edgekd.cli import main

    def invoke(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke
