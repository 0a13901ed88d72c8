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

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.nn_swap import swap_attention, swapped_attention
from edgekd.prune.attention import find_attention, set_heads
from edgekd.prune.stack import keep_layers

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


def _resize_tensors(module: nn.Module, prefix: str, shapes: dict) -> bool:
    """Give each parameter/buffer of `module` (not its children) its saved shape; True if any changed."""
    changed = False
    for store in (module._parameters, module._buffers):
        for key, tensor in list(store.items()):
            saved = shapes.get(prefix + key)
            if tensor is None or saved is None or tuple(saved) == tuple(tensor.shape):
                continue
            fresh = torch.empty(tuple(saved), dtype=tensor.dtype, device=tensor.device)
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
    """Replay a prune on a freshly built `model` so that `state_dict` loads into it."""
    for path, keep in config.get("kept_layers", {}).items():
        keep_layers(model, path, keep)
    swap_attention(model, names=config.get("attention_swap", ()))
    conv_groups = config.get("conv_groups", {})
    shapes = config.get("shapes") or {key: value.shape for key, value in state_dict.items()}
    for name, module in model.named_modules():
        if _resize_tensors(module, f"{name}." if name else "", shapes) or name in conv_groups:
            _sync_shape_attributes(name, module, conv_groups)
    modules = dict(model.named_modules())
    for name, heads in config.get("attention_heads", {}).items():
        if name not in modules:
            raise BadInput(f"prune transform: attention module '{name}' is not in the rebuilt {type(model).__name__}")
        set_heads(modules[name], heads)
    return model
