"""Issue 14's seams hold: one runtime layer whose verdicts agree, registrations in one place, and no
model-family branch outside edgekd.families."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A PTQ-quantized and a float ResNet on digits, exported to ONNX and OpenVINO through the gate."""
    from edgekd.data import load_data
    from edgekd.export import export
    from edgekd.models import resnet
    from edgekd.quant import QuantConfig, quantize
    from edgekd.targets import load_target

    data = load_data("digits")
    model = resnet(width=8).eval()
    target = load_target("x86-cpu-onnxruntime")
    quantized = quantize(model=model, data=data, config=QuantConfig.for_target(target, mode="ptq")).model
    out = tmp_path_factory.mktemp("exported")
    x = torch.from_numpy(data.x_val[:1])
    return {name: export(model=m, example_inputs=x, out_dir=out, name=name, parity_inputs=data.x_test, gate=False)
            for name, m in (("int8", quantized), ("fp32", model))}


@pytest.mark.parametrize("name", ["int8", "fp32"])
def test_the_gate_and_the_benchmark_agree_on_what_runs_int8(exported, name):
    from edgekd.bench import benchmark
    from edgekd.targets import load_target

    result = exported[name]
    for runtime, path, target in (("onnx", result.onnx, "x86-cpu-onnxruntime"),
                                  ("openvino", result.openvino_xml, "x86-cpu-openvino")):
        bench = benchmark(model=path, target=load_target(target), min_iterations=10, warmup=2, time_budget_s=0.05,
                          measure_memory=False, profile_layers=False)
        assert bench.precision.int8_executed is result.int8_executed[runtime], (runtime, name)
        gate_int8 = sum(result.int8_kernels[runtime]["kernels"].values())
        assert gate_int8 == bench.precision.compute_layers.get("int8", 0), (runtime, name)
    assert result.int8_executed["onnx"] is (name == "int8")


def test_registrations_live_in_the_composition_root_and_importing_changes_nothing():
    from edgekd import plugins
    from edgekd.distill import METRICS
    from edgekd.quant.prepare import TRANSFORM_NAME

    assert {"prune", TRANSFORM_NAME} <= set(plugins.TRANSFORMS) and plugins.DIRECTORY_LOADERS and plugins.FAMILIES
    embedding_before = METRICS["embedding"]
    importlib.import_module("edgekd.hf")  # used to replace the embedding metric on import
    assert METRICS["embedding"] is embedding_before and METRICS["embedding"].primary == "spearman"


def test_import_edgekd_stays_light():
    code = "import sys, edgekd, edgekd.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "False"  # registering costs nothing; `edgekd targets` starts fast


def test_no_model_family_branch_outside_the_families():
    places = [ROOT / "edgekd" / "pipeline.py", ROOT / "edgekd" / "cli.py", *sorted((ROOT / "edgekd" / "steps").glob("*.py"))]
    branch = re.compile(r"\bis_text\b|SentenceEncoder|edgekd\.hf\b")
    found = [f"{path.name}:{n}" for path in places for n, line in enumerate(path.read_text().splitlines(), 1)
             if branch.search(line)]
    assert not found


def test_the_family_is_chosen_from_model_and_data():
    from edgekd.data import Dataset, load_data
    from edgekd.errors import BadInput
    from edgekd.families import family_for
    from edgekd.models import resnet

    assert family_for(model=resnet(width=4), data=load_data("digits")).name == "arrays"
    split = (np.array(["a b c"] * 12, dtype=object), None)
    texts = Dataset("t", "embedding", *split, *split, *split, num_classes=None, sha256="0")
    with pytest.raises(BadInput, match="ResNet is not a text encoder"):
        family_for(model=resnet(width=4), data=texts)
