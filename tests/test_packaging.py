"""A wheel install (not the editable checkout) carries every subpackage and the built-in specs."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, edgekd
from edgekd.data import CALIBRATION_DIR, load_data
from edgekd.targets import list_targets, load_target
print(json.dumps({"package": edgekd.__file__, "targets": sorted(t.name for t in list_targets()),
                  "calibration": str(CALIBRATION_DIR), "cpu": load_target("x86-cpu-onnxruntime").device,
                  "digits": load_data("digits").x_train.shape[0]}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the wheel is made of, so setuptools' build/ stays out of the checkout."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("edgekd", "targets", "calibration"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, cwd=out)
    (built,) = out.glob("edgekd-*.whl")
    return built


def test_wheel_has_every_subpackage_and_the_builtin_specs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "edgekd").rglob("__init__.py")}
    assert source_packages <= {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    for folder in ("targets", "calibration"):
        specs = {p.name for p in (REPO / folder).glob("*.yaml")}
        assert specs and {f"edgekd/_builtin/{folder}/{s}" for s in specs} <= names


def test_installed_wheel_finds_its_specs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True)
    found = json.loads(probe.stdout)
    assert Path(found["package"]).is_relative_to(site)  # the wheel's copy, not the checkout, was imported
    assert Path(found["calibration"]).is_relative_to(site)
    assert found["targets"] == sorted(p.stem for p in (REPO / "targets").glob("*.yaml"))
    assert found["cpu"] == "cpu" and found["digits"] > 1000
