"""Depth pruning: keep some blocks of a transformer's layer stack and drop the rest.

A layer stack is an `nn.ModuleList` (or `nn.Sequential`) of blocks of one class; in a
transformer every block holds a self-attention module, which is how the stack is found when
the caller does not name it. Blocks keep their weights; Hugging Face bookkeeping that counts
layers (`config.num_hidden_layers`, each attention's `layer_idx` for caches) is renumbered.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from edgekd.errors import BadInput
from edgekd.prune.attention import is_attention


def _is_stack(module: nn.Module) -> bool:
    blocks = list(module.children())
    return (isinstance(module, (nn.ModuleList, nn.Sequential)) and len(blocks) >= 1
            and len({type(b) for b in blocks}) == 1)


def find_layer_stack(model: nn.Module, path: str | None = None) -> tuple[str, nn.Module]:
    """(name, container) of the layer stack: the one named by `path`, or the only attention stack."""
    if path is not None:
        modules = dict(model.named_modules())
        if path not in modules:
            raise BadInput(f"layers '{path}': no such module in {type(model).__name__}")
        if not _is_stack(modules[path]):
            raise BadInput(f"layers '{path}': a {type(modules[path]).__name__}, not a ModuleList/Sequential of "
                           "blocks of one class")
        return path, modules[path]
    stacks = [(name, module) for name, module in model.named_modules()
              if name and _is_stack(module) and all(any(is_attention(m) for m in block.modules())
                                                    for block in module.children())]
    if len(stacks) != 1:
        found = ", ".join(name for name, _ in stacks) or "none"
        raise BadInput(f"{type(model).__name__}: expected one stack of transformer layers, found {found}; "
                       "name it with layers='<module name>'")
    return stacks[0]


def keep_layers(model: nn.Module, path: str, keep: Sequence[int]) -> None:
    """Replace the stack at `path` by its blocks `keep` (in place), renumbering layer bookkeeping."""
    _, stack = find_layer_stack(model, path)
    count = len(stack)
    keep = list(keep)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) for i in keep):
        raise BadInput(f"layers '{path}': keep must be a non-empty list of layer indices, got {keep!r}")
    if keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= count:
        raise BadInput(f"layers '{path}': keep must be increasing indices in [0, {count - 1}], got {keep}")
    blocks = [stack[i] for i in keep]
    for index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, type(stack)(*blocks) if isinstance(stack, nn.Sequential) else nn.ModuleList(blocks))
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "num_hidden_layers", None) == count:
            config.num_hidden_layers = len(blocks)
