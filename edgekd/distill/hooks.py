"""Tap intermediate features by module name with forward hooks, leaving model code untouched.

A tap name is a module name from `model.named_modules()`, optionally suffixed `#i` to take
element i of a tuple output (Hugging Face attention modules return `(context, probs)`).
When a recipe names no layers, features are matched block to block by proportional depth.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from edgekd.errors import BadInput, close_matches

SELECTOR = "#"


def split_selector(tap: str) -> tuple[str, int | None]:
    """'encoder.layer.0.attention.self#1' -> ('encoder.layer.0.attention.self', 1)."""
    name, sep, index = tap.partition(SELECTOR)
    if not sep:
        return tap, None
    if not index.isdigit():
        raise BadInput(f"layer '{tap}': the part after '{SELECTOR}' must be an output index (e.g. '{name}#1')")
    return name, int(index)


def resolve_module(model: nn.Module, tap: str, role: str) -> nn.Module:
    """The module a tap names, or BadInput listing the model's close matches."""
    name, _ = split_selector(tap)
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        raise BadInput(f"{role} has no layer '{name}' ({close_matches(name, names)})")
    return modules[name]


def output_tensor(output, where: str) -> torch.Tensor:
    """The tensor in a module's or model's output: itself, `logits`, or the first tensor element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise BadInput(f"{where}: output is {type(output).__name__}, not a tensor; wrap the model to return one")


def _select(output, index: int | None, tap: str, role: str) -> torch.Tensor:
    if index is None:
        return output_tensor(output, f"{role} layer '{tap}'")
    if not isinstance(output, (tuple, list)) or index >= len(output):
        size = len(output) if isinstance(output, (tuple, list)) else 1
        raise BadInput(f"{role} layer '{tap}': output has {size} element(s), no index {index}")
    item = output[index]
    if item is None:
        raise BadInput(
            f"{role} layer '{tap}': output element {index} is None (Hugging Face models return attention "
            "probabilities only when loaded with attn_implementation='eager')"
        )
    if not isinstance(item, torch.Tensor):
        raise BadInput(f"{role} layer '{tap}': output element {index} is {type(item).__name__}, not a tensor")
    return item


class FeatureTaps:
    """Forward hooks that record the named modules' outputs into `features` while active.

    A module called several times in one forward keeps its last output.
    """

    def __init__(self, model: nn.Module, taps, *, role: str):
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self._targets = [(tap, resolve_module(model, tap, role), split_selector(tap)[1]) for tap in dict.fromkeys(taps)]
        self._handles: list = []

    def __enter__(self) -> "FeatureTaps":
        for tap, module, index in self._targets:
            self._handles.append(module.register_forward_hook(self._recorder(tap, index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def _recorder(self, tap: str, index: int | None):
        def record(_module, _inputs, output):
            self.features[tap] = _select(output, index, tap, self.role)

        return record


def blocks(model: nn.Module) -> list[str]:
    """The model's blocks in registration order: non-leaf children of a Sequential or ModuleList,
    outermost only (ResNet basic blocks, inverted residuals, transformer layers)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            inside_found = any(full.startswith(f"{outer}.") for outer in found)
            if any(True for _ in child.children()) and not inside_found:
                found.append(full)
    return found


def proportional_index(k: int, n: int, m: int) -> int:
    """1-based teacher index for the student's k-th of n layers among m: round(k*m/n), half up, in [1, m]."""
    return min(m, max(1, int(k * m / n + 0.5)))


def proportional_map(student_layers: list[str], teacher_layers: list[str]) -> dict[str, str]:
    n, m = len(student_layers), len(teacher_layers)
    return {s: teacher_layers[proportional_index(k, n, m) - 1] for k, s in enumerate(student_layers, start=1)}
