"""A pruned model reloads: through the checkpoint factory, and as a program without its code."""

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.errors import BadInput
from edgekd.models import ModelRef
from edgekd.prune import load_program, prune, save_program

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

USER_MODEL = '''
import torch
from torch import nn


class UserNet(nn.Module):
    """A model whose class exists only in this file: a residual block and a concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1))
        self.right = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.Conv2d(32, 32, 3, padding=1, groups=32))
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([self.left(x) + x, self.right(x)], dim=1)
        return self.fc(x.mean((2, 3)))
'''

LOADER = '''
import importlib.abc, sys
import numpy as np, torch

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "{module}":
            raise ImportError("the defining module is not available here")

sys.meta_path.insert(0, Block())
from edgekd.prune import load_program

model = load_program(path="{program}", trusted=True)
x = torch.from_numpy(np.load("{inputs}"))
expected = np.load("{expected}")
print("max_abs_diff", float(np.abs(model(x).detach().numpy() - expected).max()))
try:
    __import__("{module}")
except ImportError:
    print("defining module unavailable")
'''


def test_pruned_program_reloads_in_a_process_that_cannot_import_the_model_code(tmp_path, monkeypatch):
    module = "edgekd_test_user_net"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{module}.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(code_dir))
    torch.manual_seed(0)
    model = __import__(module).UserNet().eval()
    result = prune(model=model, example_inputs=X, ratio=0.5)
    assert result.model.left[0].out_channels == 16 and result.model.fc.in_features == 16 + 16
    assert result.report["params_ratio"] < 0.6
    program = save_program(model=result.model, example_inputs=X, path=tmp_path / "pruned.pt2")
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "expected.npy", result.model(X).detach().numpy())
    script = LOADER.format(module=module, program=program, inputs=tmp_path / "x.npy", expected=tmp_path / "expected.npy")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    diff = float(run.stdout.split("max_abs_diff")[1].split()[0])
    assert diff < 1e-5
    assert "defining module unavailable" in run.stdout


def test_pruned_checkpoint_reloads_through_the_factory(tmp_path):
    ref = ModelRef("edgekd.models:mobilenet", {"width": 8})
    torch.manual_seed(0)
    result = prune(model=ref.build().eval(), example_inputs=X, ratio=0.6, global_pruning=True)
    widths = {g["after"] for g in result.report["groups"]}
    assert len(widths) > 3  # ragged widths: the reshape reads every one from the weights
    path = save_checkpoint(tmp_path / "pruned.pt", result.model, ref=ref, transforms=[result.transform])
    reloaded = load_checkpoint(path).model
    assert sum(p.numel() for p in reloaded.parameters()) == result.report["after"]["params"]
    torch.testing.assert_close(reloaded(X), result.model(X), rtol=0, atol=0)


def test_a_program_with_pickled_payloads_is_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    program = save_program(model=model, example_inputs=X, path=tmp_path / "model.pt2")
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            target.writestr(item, data)
    torch.testing.assert_close(load_program(path=program, trusted=True)(X), model(X))
    with pytest.raises(BadInput, match="load only programs you made"):  # the file holds code: an explicit opt-in
        load_program(path=program)
    with pytest.raises(BadInput, match="refusing to load pickled payloads"):
        load_program(path=tampered, trusted=True)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a torch.export program archive"):
        load_program(path=tmp_path / "junk.pt2", trusted=True)
