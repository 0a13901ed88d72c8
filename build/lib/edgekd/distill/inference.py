"""Running a model over numpy data in batches: collation, devices, eval mode, output extraction.

Shared by the teacher cache, validation and `evaluate`, so every place feeds a model the same way:
`model(collate(x[i:j]))`, its tensor output taken by `output_tensor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from edgekd.distill.hooks import FeatureTaps, output_tensor
from edgekd.errors import BadInput

Collate = Callable[[np.ndarray], Any]


def default_collate(batch: np.ndarray) -> torch.Tensor:
    """Numeric numpy batch -> tensor (no copy when contiguous); text needs a collate (tokenizer)."""
    if batch.dtype.kind in ("U", "S", "O"):
        raise BadInput("the data is text: set config.collate to a function that turns a batch of strings into model input")
    return torch.from_numpy(np.ascontiguousarray(batch))


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(inputs, device: torch.device):
    """Move a collated batch (tensor, mapping or sequence of them) to `device`."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if hasattr(inputs, "to") and isinstance(inputs, Mapping):  # e.g. a tokenizer's BatchEncoding
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, no_grad: bool = True):
    """Eval mode (and no autograd) inside; the model's previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield model
    finally:
        model.train(was_training)


def run_batches(model: nn.Module, x: np.ndarray, *, collate: Collate | None, batch_size: int, taps=(),
                role: str = "model") -> Iterator[tuple[int, int, torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (start, stop, output, features) for consecutive batches of `x`, in eval mode, on CPU."""
    collate = collate or default_collate
    device = model_device(model)
    with eval_mode(model), FeatureTaps(model, taps, role=role) as tapped:
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            output = output_tensor(model(to_device(collate(x[start:stop]), device)), role)
            features = {name: tensor.detach().cpu() for name, tensor in tapped.features.items()}
            yield start, stop, output.detach().cpu(), features


def predict(model: nn.Module, x: np.ndarray, *, collate: Collate | None = None, batch_size: int = 256,
            role: str = "model") -> torch.Tensor:
    """The model's outputs on all of `x`, concatenated (eval mode, no grad)."""
    outputs = [out for _, _, out, _ in run_batches(model, x, collate=collate, batch_size=batch_size, role=role)]
    if not outputs:
        raise BadInput(f"{role}: no samples to run on")
    return torch.cat(outputs)
