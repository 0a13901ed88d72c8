"""Rebuild a pruned model from its original factory: the checkpoint transform "prune".

A pruned model is its original architecture with narrower layers, so it reloads as: build the
original from the factory, drop the layers the prune dropped, give every parameter and buffer
the shape it has in the saved state dict, and fix the attributes that the shapes do not carry
(a convolution's `groups`, an attention module's head count). The transform config records
exactly those: `{"kept_layers": {stack: [indices]}, "conv_groups": {name: groups},
"attention_heads": {name: heads}, "attention_swap": [names]}` (the last: nn.MultiheadAttention
modules rebuilt from Linear layers first, edgekd.nn_swap); everything else comes from the weights.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.nn_swap import swap_attention, swapped_attention
from edgekd.prune.attention import find_attention, set_heads
from edgekd.prune.stack import keep_layers

MAX_RESIZED_ELEMENTS = 2**30
"""Most elements (4 GiB of float32) the tensors a prune replay resizes may hold together: a
checkpoint's `config.shapes` is the file's word, and a single `[20000, 20000, 3, 3]` asked 14 GB."""

CONFIG_KEY = "edgekd_pruning"  # where a Hugging Face config records what it cannot describe (heads per module)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def shape_config(model: nn.Module, kept_layers: dict | None = None) -> dict:
    """What a rebuilt model needs beyond the state dict's shapes to match `model`."""
    return {
        "kept_layers": dict(kept_layers or {}),
        # Every tensor's shape, so the prune replays even when later transforms (BN folding by the
        # quantizer) rename or drop the tensors the final state dict holds.
        "shapes": {key: list(value.shape) for key, value in model.state_dict().items()},
        "conv_groups": {name: m.groups for name, m in model.named_modules() if isinstance(m, _CONV) and m.groups != 1},
        "attention_heads": {a.name: a.num_heads for a in find_attention(model)},
        # nn.MultiheadAttention modules rebuilt from Linear layers before pruning (edgekd.nn_swap)
        "attention_swap": swapped_attention(model),
    }


def _pretrained_roots(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face models inside `model` (the model itself, or a wrapped one)."""
    if "transformers" not in sys.modules:  # then nothing in `model` can be a Hugging Face model
        return []
    from transformers import PreTrainedModel

    roots: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f"{r}.") or r == "" for r, _ in roots):
            roots.append((name, module))
    return [module for _, module in roots]


def record_pretrained_config(model: nn.Module) -> None:
    """Write the pruned shapes of every Hugging Face model in `model` into its config, so `save_pretrained`
    and the Optimum config.json describe the pruned model (see edgekd.prune.pretrained)."""
    for hf in _pretrained_roots(model):
        widths = {m.out_features for name, m in hf.named_modules()
                  if name.endswith("intermediate.dense") and isinstance(m, nn.Linear)}
        if len(widths) == 1 and hasattr(hf.config, "intermediate_size"):
            hf.config.intermediate_size = widths.pop()
        spec = shape_config(hf)
        setattr(hf.config, CONFIG_KEY, {"conv_groups": spec["conv_groups"], "attention_heads": spec["attention_heads"]})


def _checked_shape(key: str, saved, tensor: torch.Tensor, state_dict: dict) -> tuple[int, ...]:
    """The shape `config.shapes` gives `key`, if it may be allocated: the shape of the tensor the
    checkpoint's own state dict holds for `key` (already in memory), or else no wider than the
    freshly built tensor in any dimension (a prune only narrows; a chained prune's earlier shapes
    are wider than the final weights but never than the original). BadInput naming the key otherwise."""
    if not isinstance(saved, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in saved):
        raise BadInput(f"prune transform: config.shapes['{key}'] must be a list of non-negative integers, got {saved!r:.80}")
    shape = tuple(saved)
    held = state_dict.get(key)
    if torch.is_tensor(held) and tuple(held.shape) == shape:
        return shape
    if len(shape) != tensor.dim() or any(d > f for d, f in zip(shape, tensor.shape)):
        expected = f"{list(held.shape)} as its state_dict holds" if torch.is_tensor(held) else \
            f"no wider than the built {list(tensor.shape)}"
        raise BadInput(f"prune transform: config.shapes['{key}'] is {list(shape)}; expected {expected}")
    return shape


def _resize_tensors(module: nn.Module, prefix: str, shapes: dict, state_dict: dict, budget: list[int]) -> bool:
    """Give each parameter/buffer of `module` (not its children) its saved shape; True if any changed.
    `budget` holds the elements resized so far, bounded by MAX_RESIZED_ELEMENTS."""
    changed = False
    for store in (module._parameters, module._buffers):
        for key, tensor in list(store.items()):
            saved = shapes.get(prefix + key)
            if tensor is None or saved is None:
                continue
            shape = _checked_shape(prefix + key, saved, tensor, state_dict)
            if shape == tuple(tensor.shape):
                continue
            budget[0] += math.prod(shape)
            if budget[0] > MAX_RESIZED_ELEMENTS:
                raise BadInput(f"prune transform: config.shapes['{prefix + key}'] brings the resized tensors past "
                               f"{MAX_RESIZED_ELEMENTS:,} elements, the most a prune replay may allocate")
            fresh = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
            store[key] = nn.Parameter(fresh, requires_grad=tensor.requires_grad) if store is module._parameters else fresh
            changed = True
    return changed


def _sync_shape_attributes(name: str, module: nn.Module, conv_groups: dict) -> None:
    """Make a resized layer's size attributes agree with its tensors."""
    if isinstance(module, _CONV):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        weight = module.weight.shape  # conv: (out, in / groups, ...); transposed: (in, out / groups, ...)
        if name in conv_groups:
            module.groups = conv_groups[name]
        elif depthwise:  # one group per channel, before and after pruning
            module.groups = weight[0]
        full, per_group = weight[0], weight[1] * module.groups
        module.in_channels, module.out_channels = (full, per_group) if module.transposed else (per_group, full)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = (module.weight if module.affine else module.running_mean).shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.affine:
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape


def reshape_to_state_dict(model: nn.Module, config: dict, state_dict: dict) -> nn.Module:
    """Replay a prune on a freshly built `model` so that `state_dict` loads into it; a Hugging Face
    config inside it follows the new shapes, as it did when the prune was made."""
    for path, keep in config.get("kept_layers", {}).items():
        keep_layers(model, path, keep)
    swap_attention(model, names=config.get("attention_swap", ()))
    conv_groups = config.get("conv_groups", {})
    shapes = config.get("shapes") or {key: list(value.shape) for key, value in state_dict.items()}
    if not isinstance(shapes, dict):
        raise BadInput(f"prune transform: config.shapes must be a mapping of tensor names to shapes, "
                       f"got {type(shapes).__name__}")
    budget = [0]
    for name, module in model.named_modules():
        if _resize_tensors(module, f"{name}." if name else "", shapes, state_dict, budget) or name in conv_groups:
            _sync_shape_attributes(name, module, conv_groups)
    modules = dict(model.named_modules())
    for name, heads in config.get("attention_heads", {}).items():
        if name not in modules:
            raise BadInput(f"prune transform: attention module '{name}' is not in the rebuilt {type(model).__name__}")
        set_heads(modules[name], heads)
    record_pretrained_config(model)
    return model
