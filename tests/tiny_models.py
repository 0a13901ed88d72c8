"""A user's own model module, outside edgekd: `tiny_models:trained_teacher` is a module:factory."""

import os

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(x))))))
        return self.head(x.mean((2, 3)))


def trained_teacher() -> nn.Module:
    """Trained for a few epochs on digits; TINY_TEACHER_SEED changes its weights (a 'new teacher')."""
    from edgekd.data import load_data
    from edgekd.distill import DistillConfig, distill

    seed = int(os.environ.get("TINY_TEACHER_SEED", "0"))
    torch.manual_seed(seed)
    config = DistillConfig(epochs=4, kd=False, lr=1e-2, seed=seed, patience=None)
    return distill(student=TinyCNN(), data=load_data("digits"), config=config, progress=False).model.eval()
