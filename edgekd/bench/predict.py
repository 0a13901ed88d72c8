"""Outputs of an exported artifact over a whole dataset, for judging variants as they ship.

The ablation scores every variant from its exported file rather than its PyTorch module, so
a metric in the report is the metric of what would be deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from edgekd.errors import BadInput
from edgekd.runtimes import cpu_session

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
    session = cpu_session(path)
    try:
        batch = session.fixed_batch() or batch_size
        feeds = _named(inputs, session.input_names())
        total = len(next(iter(feeds.values())))
        outputs = [session.run({n: a[i:i + batch] for n, a in feeds.items()})[0] for i in range(0, total, batch)]
    finally:
        session.close()
    return np.concatenate(outputs)
