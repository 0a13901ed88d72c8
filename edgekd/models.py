"""Built-in model families and the resolver for user model references.

The built-ins are real architectures at edge scale: a ResNet-style CNN (residual adds, batch
norm), a MobileNetV2-style CNN (depthwise convs, inverted residuals, squeeze-excite, a
concat), sized by `width` so one family gives both teacher and student, and a ViT made of PyTorch's
own `nn.TransformerEncoder` (the layers torchvision's ViTs and many user models are built from).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.errors import NOT_INPUT_ERRORS, BadInput


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style CNN: stem, three stages of basic blocks (stride 1, 2, 2), pooled linear head."""

    def __init__(self, width: int = 32, blocks: tuple[int, ...] = (1, 1, 1), in_channels: int = 1,
                 num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin if j == 0 else cout, cout, 1 if i == 0 or j else 2) for j in range(count)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, se: bool = True):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """MobileNetV2-style CNN with squeeze-excite and a two-branch concat before the head."""

    def __init__(self, width: int = 16, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(w, w, 1),
            InvertedResidual(w, 2 * w, 2),
            InvertedResidual(2 * w, 2 * w, 1),
            InvertedResidual(2 * w, 4 * w, 2),
            InvertedResidual(4 * w, 4 * w, 1),
        )
        self.branch_a = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU6())
        self.branch_b = nn.Sequential(
            nn.Conv2d(4 * w, 4 * w, 3, 1, 1, groups=4 * w, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU6()
        )
        self.head_conv = nn.Sequential(nn.Conv2d(8 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = self.head_conv(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(width: int = 32, blocks: tuple[int, ...] = (1, 1, 1), in_channels: int = 1, num_classes: int = 10) -> ResNet:
    return ResNet(width=width, blocks=tuple(blocks), in_channels=in_channels, num_classes=num_classes)


def mobilenet(width: int = 16, in_channels: int = 1, num_classes: int = 10) -> MobileNet:
    return MobileNet(width=width, in_channels=in_channels, num_classes=num_classes)


class ViT(nn.Module):
    """A ViT classifier of PyTorch's standard layers: patch conv, cls token, positions, nn.TransformerEncoder.
    `nested_tensor` is the encoder's own fast-path flag (PyTorch's default True), kept so both paths can be
    tested; the attention swap (edgekd.nn_swap) replaces the fast path either way."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 4, ffn: int = 256, patch: int = 4,
                 size: int = 16, classes: int = 10, channels: int = 1, nested_tensor: bool = False):
        super().__init__()
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=nested_tensor)
        for block in self.encoder.layers:  # the encoder deep-copies one layer: give each its own initial weights
            block.self_attn._reset_parameters()
            for linear in (block.self_attn.out_proj, block.linear1, block.linear2):
                linear.reset_parameters()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(x)[:, 0]))


def vit(dim: int = 64, heads: int = 4, layers: int = 4, ffn: int = 256, patch: int = 4, size: int = 16,
        classes: int = 10, channels: int = 1) -> ViT:
    return ViT(dim=dim, heads=heads, layers=layers, ffn=ffn, patch=patch, size=size, classes=classes,
               channels=channels)


@dataclass
class ModelRef:
    """How a model was made, so a checkpoint can rebuild it: `module:factory` plus keyword arguments."""

    factory: str
    kwargs: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        return call_factory(self.factory, self.kwargs)


def resolve_factory(ref: str):
    """Import `package.module:callable`; the only code a user's input can run is what it names."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"model reference '{ref}': expected 'package.module:factory', a checkpoint path or a model directory")
    try:
        module = _import_from_here(module_name)
    except ImportError as err:
        raise BadInput(f"model reference '{ref}': cannot import module '{module_name}': {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInput(f"model reference '{ref}': '{module_name}' has no callable '{attr}'")
    return factory


def _import_from_here(module_name: str):
    """Import a module, also from the working directory: `edgekd` behaves like `python -m edgekd`,
    where a user's `models.py` beside them is importable. Appended, so it never shadows a package."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def seed_everything(seed: int) -> None:
    """Seed every generator a factory or training step may draw from (Python, numpy, torch), so the
    same recipe builds the same initial weights and gives the same hashes."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def call_factory(ref: str, kwargs: dict | None = None, *, seed: int | None = None) -> nn.Module:
    """Build the model `ref` names; under `seed` when given (its random initial weights are then reproducible)."""
    factory = resolve_factory(ref)
    kwargs = dict(kwargs or {})
    if seed is not None:
        seed_everything(seed)
    try:
        params = inspect.signature(factory).parameters
        accepted = {k: v for k, v in kwargs.items() if k in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())}
    except (TypeError, ValueError):
        accepted = kwargs
    try:
        model = factory(**accepted)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:  # the user's own code: name it and the cause (--debug shows the traceback)
        cause = str(err).splitlines()[0][:200] if str(err) else ""
        raise BadInput(f"model reference '{ref}': calling the factory failed: {type(err).__name__}: {cause}") from err
    if not isinstance(model, nn.Module):
        raise BadInput(f"model reference '{ref}': the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
