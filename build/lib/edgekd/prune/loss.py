"""The calibration loss whose gradients rank channels for first-order Taylor importance.

Taylor importance scores a channel by |weight x gradient| of a loss on calibration data: the
loss the pruned model will be recovered with is the one to rank by, so when a teacher is given
this is the KD loss. The criterion is passed in (e.g. edgekd.distill's response-KD loss, which
has the same `(student, teacher, labels)` signature), keeping pruning independent of training.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.prune.measure import Inputs, call_model

Criterion = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def _logits(output) -> torch.Tensor:
    """The tensor a criterion compares: the output itself, or the first tensor of a tuple/ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    values = list(output.values()) if isinstance(output, dict) else list(output)
    if not values or not isinstance(values[0], torch.Tensor):
        raise BadInput(f"calibration_loss: cannot take a tensor from a model output of type {type(output).__name__}")
    return values[0]


def calibration_loss(*, batches: Sequence[Inputs | tuple[Inputs, torch.Tensor]], criterion: Criterion,
                     teacher: nn.Module | None = None, labeled: bool = False) -> Callable[[nn.Module], torch.Tensor]:
    """`loss_fn(model)`: mean of `criterion(student_out, teacher_out, labels)` over `batches`.

    With `labeled`, each batch is `(inputs, labels)`; otherwise inputs only and labels are None.
    Teacher outputs are computed once, without gradients.
    """
    if not batches:
        raise BadInput("calibration_loss: no calibration batches")
    if teacher is None and not labeled:
        raise BadInput("calibration_loss: needs a teacher or labeled batches")
    pairs = [(b[0], b[1]) if labeled else (b, None) for b in batches]
    targets = [None] * len(pairs)
    if teacher is not None:
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            targets = [_logits(call_model(teacher, inputs)) for inputs, _ in pairs]
        teacher.train(was_training)

    def loss_fn(model: nn.Module) -> torch.Tensor:
        total = sum(criterion(_logits(call_model(model, inputs)), target, labels)
                    for (inputs, labels), target in zip(pairs, targets))
        return total / len(pairs)

    return loss_fn
