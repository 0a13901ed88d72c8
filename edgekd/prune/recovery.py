"""Pruning with KD recovery: the student a `prune:R` spec names, made from its teacher."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekd.data import Dataset
from edgekd.prune.core import prune
from edgekd.prune.loss import calibration_loss


def prune_with_recovery(*, teacher: nn.Module, data: Dataset, ratio: float, channel_multiple: int = 1,
                        importance: str = "magnitude", global_pruning: bool = False, steps: int = 1,
                        recovery_epochs: int = 0, ignore_layers=(), seed: int = 0, collate=None):
    """Prune `teacher` into a student; Taylor importance ranks channels by the KD loss's gradients,
    and each pruning step is followed by `recovery_epochs` of KD against the unpruned teacher."""
    from edgekd.distill import LOSSES, DistillConfig, distill

    example = torch.from_numpy(np.ascontiguousarray(data.x_val[:1]))
    loss_fn = None
    if importance == "taylor":
        batches = [torch.from_numpy(np.ascontiguousarray(data.x_train[i:i + 64])) for i in range(0, 256, 64)]
        loss_fn = calibration_loss(batches=batches, teacher=teacher, criterion=LOSSES["response"](temperature=4.0))

    def recover(model: nn.Module, step: int) -> nn.Module:
        config = DistillConfig(epochs=recovery_epochs, lr=2e-3, patience=None, seed=seed, collate=collate)
        return distill(student=model, teacher=teacher, data=data, config=config, progress=False).model

    return prune(model=teacher, example_inputs=example, ratio=ratio, channel_multiple=channel_multiple,
                 importance=importance, global_pruning=global_pruning, ignore_layers=ignore_layers, steps=steps,
                 recovery=recover if recovery_epochs else None, loss_fn=loss_fn)
