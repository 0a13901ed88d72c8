"""Outputs of an exported artifact over a whole dataset, for judging variants as they ship.

The ablation scores every variant from its exported file rather than its PyTorch module, so
a metric in the report is the metric of what would be deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from edgekd.bench.runtimes import openvino_config, openvino_core, runtime_error_summary
from edgekd.errors import BadInput

Inputs = Union[np.ndarray, dict[str, np.ndarray]]


def _named(inputs: Inputs, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise BadInput(f"inputs lack {', '.join(missing)} (the model takes {', '.join(names)})")
        return {n: inputs[n] for n in names}
    if len(names) != 1:
        raise BadInput(f"the model takes {len(names)} inputs ({', '.join(names)}); pass a dict of arrays")
    return {names[0]: inputs}


def predict(*, model: Union[str, Path], inputs: Inputs, batch_size: int = 256) -> np.ndarray:
    """The first output of `model` (.onnx on ONNX Runtime CPU, .xml on OpenVINO CPU) for all samples."""
    path = Path(model)
    if not path.is_file():
        raise BadInput(f"{path}: no such model file")
    try:
        if path.suffix == ".xml":
            compiled = openvino_core().compile_model(str(path), "CPU", openvino_config("CPU"))
            names = [port.get_any_name() for port in compiled.inputs]
            fixed = compiled.inputs[0].get_partial_shape()[0]
            batch = fixed.get_length() if fixed.is_static else batch_size
            run = (lambda feeds: compiled(feeds)[compiled.outputs[0]])
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            first = session.get_inputs()[0].shape[0]
            batch = first if isinstance(first, int) else batch_size
            run = (lambda feeds: session.run(None, feeds)[0])
    except Exception as err:  # the runtimes raise their own exception classes
        raise BadInput(f"{path}: cannot load the model: {runtime_error_summary(err)}") from None
    feeds = _named(inputs, names)
    total = len(next(iter(feeds.values())))
    outputs = [np.asarray(run({n: a[i:i + batch] for n, a in feeds.items()})) for i in range(0, total, batch)]
    return np.concatenate(outputs)
