"""`nn.MultiheadAttention` rebuilt from `nn.Linear` projections and `MatMul` modules, same weights, same outputs.

PyTorch's `nn.MultiheadAttention` keeps q/k/v in one packed `in_proj_weight` and runs fused
kernels (`_native_multi_head_attention`, and, inside `nn.TransformerEncoderLayer`,
`_transformer_encoder_layer_fwd`) that read that weight directly. Neither the quantizer (which
swaps `nn.Linear` and `MatMul` modules for fake-quant ones) nor Torch-Pruning's dependency graph
(which sees one opaque module whose width is the residual stream) can work inside it. So the
pruner and the quantizer first replace every one they can by `LinearMultiheadAttention`: four
`nn.Linear` layers (`q_proj`, `k_proj`, `v_proj`, `out_proj`) and two `MatMul` modules
(`qk_matmul`: q @ k^T, `av_matmul`: attention @ v), computing what `nn.MultiheadAttention`
computes (torch.ao's quantizable MultiheadAttention did the same) for batch_first True or False,
unbatched inputs, `key_padding_mask` / `attn_mask` (bool or float), `need_weights` and
`average_attn_weights`, and training-mode attention dropout.

Refused, and left as they are with the reason recorded (`AttentionSwap.refused`): `kdim`/`vdim`
other than `embed_dim`, `add_bias_kv`, `add_zero_attn`, subclasses (their forward may differ),
modules with hooks attached, and the model itself being one.

The new module keeps `nn.TransformerEncoderLayer` off its fused fast path: the layer checks
`self_attn.in_proj_bias is None` ("bias=False") and `_qkv_same_embed_dim` before calling the
fused kernel, and the new module has no packed weight (both are class attributes saying so).
`nn.TransformerEncoder` would turn a padded batch into a nested tensor (a path only the fused
layers take); `use_nested_tensor` is switched off on every encoder whose layers were swapped.
`nn.TransformerDecoderLayer` has no fused path. The swap is recorded by the stages that make it
(the "prune" transform's `attention_swap`, the fake-quant plan's `attention_swap`) and replayed by
them with `swap_attention(model, names=...)`, so checkpoints reload without a transform of its own.

It sits beside the stages, not in one: edgekd.prune and edgekd.quant both use it and may not import
each other (pyproject's import contracts), so it also holds the `MatMul` placeholder both need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import BadInput


class MatMul(nn.Module):
    """`torch.matmul` as a module: put it where attention multiplies activations (Q @ K^T,
    P @ V) so `edgekd.quant.prepare` can quantize both operands; in float it is plain matmul.
    (Defined here, below both the pruner and the quantizer; `edgekd.quant.MatMul` is this class.)"""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class LinearMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` (embed_dim == kdim == vdim) as Linear projections and MatMul modules.

    `num_heads` heads of `head_dim` each: the q/k/v projections have `num_heads * head_dim`
    outputs, so pruning whole heads shrinks them and the output projection's inputs, and pruning
    the embedding width shrinks their inputs and its outputs; `embed_dim`, `kdim` and `vdim` are
    read from the layers. After pruning heads, set `num_heads` (edgekd.prune does).
    """

    # No packed in-projection: PyTorch's fused transformer paths check these and stay off.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False
    bias_k = None
    bias_v = None
    add_zero_attn = False

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, head_dim: int | None = None, device=None, dtype=None):
        super().__init__()
        head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        if num_heads < 1 or head_dim < 1:
            raise BadInput(f"LinearMultiheadAttention: num_heads ({num_heads}) and head_dim ({head_dim}) must be >= 1")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = float(dropout)
        self.batch_first = batch_first
        inner = num_heads * head_dim
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias, **kw)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias, **kw)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias, **kw)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **kw)
        self.qk_matmul = MatMul()
        self.av_matmul = MatMul()

    @property
    def embed_dim(self) -> int:
        return self.out_proj.out_features

    @property
    def kdim(self) -> int:
        return self.k_proj.in_features

    @property
    def vdim(self) -> int:
        return self.v_proj.in_features

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention) -> "LinearMultiheadAttention":
        """The same attention with the same weights (copies of `mha`'s packed q/k/v rows, its out_proj's
        parameters shared); refuses what it cannot represent (see `why_not_swappable`)."""
        reason = why_not_swappable(mha)
        if reason is not None:
            raise BadInput(f"cannot rebuild this nn.MultiheadAttention from Linear layers: {reason}")
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=bias is not None,
                  batch_first=mha.batch_first, device=weight.device, dtype=weight.dtype)
        e = mha.embed_dim
        with torch.no_grad():
            for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                proj.weight = nn.Parameter(weight[i * e:(i + 1) * e].detach().clone(),
                                           requires_grad=weight.requires_grad)
                if bias is not None:
                    proj.bias = nn.Parameter(bias[i * e:(i + 1) * e].detach().clone(), requires_grad=bias.requires_grad)
        new.out_proj.weight = mha.out_proj.weight
        new.out_proj.bias = mha.out_proj.bias
        return new.train(mha.training)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Also load an `nn.MultiheadAttention` state dict (packed `in_proj_weight` / `in_proj_bias`)."""
        for kind in ("weight", "bias"):
            packed = state_dict.get(f"{prefix}in_proj_{kind}")
            if packed is not None and packed.shape[0] % 3 == 0:
                state_dict.pop(f"{prefix}in_proj_{kind}")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3)):
                    state_dict[f"{prefix}{name}.{kind}"] = part
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _heads(self, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
        """(B, L, H*D) or (L, B, H*D) -> (B, H, L, D)."""
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        return x.transpose(1, 2) if batch_first else x.permute(1, 2, 0, 3)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        # torch.fx's symbolic trace (the quantizer's placement plan) cannot branch on a shape: it takes
        # the batched path.
        unbatched = not isinstance(query, torch.fx.Proxy) and query.dim() == 2
        batch_first = self.batch_first
        if unbatched:  # (L, E): a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
            batch_first = True
        # Projections read the inputs as given (shared quantizer for self-attention), then split heads.
        q = self._heads(self.q_proj(query), batch_first)
        k = self._heads(self.k_proj(key), batch_first)
        v = self._heads(self.v_proj(value), batch_first)
        mask = self._merged_mask(attn_mask, key_padding_mask, q.dtype)
        scores = self.qk_matmul(q * math.sqrt(1.0 / self.head_dim), k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout)
        context = self.av_matmul(weights, v)  # (B, H, L, D)
        context = context.transpose(1, 2) if batch_first else context.permute(2, 0, 1, 3)
        out = self.out_proj(context.flatten(-2))
        if unbatched:
            out = out.squeeze(0)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights

    def _merged_mask(self, attn_mask, key_padding_mask, dtype) -> torch.Tensor | None:
        """attn_mask (L, S) or (B*H, L, S) plus key_padding_mask (B, S) as one additive (B|1, H|1, L|1, S) mask."""
        if isinstance(attn_mask, torch.fx.Proxy) or isinstance(key_padding_mask, torch.fx.Proxy):
            traced = True  # torch.fx's symbolic trace records the data flow only: no dtype or shape checks
        else:
            traced = False
            key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                                 other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                                 target_type=dtype)
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                          target_type=dtype, check_other=False)
        if attn_mask is not None and not traced:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.unflatten(0, (-1, self.num_heads))
            elif attn_mask.dim() != 2:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask[:, None, None, :]
            return key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        return attn_mask


def why_not_swappable(module: nn.Module) -> str | None:
    """Why `module` (an nn.MultiheadAttention) cannot become a LinearMultiheadAttention, or None if it can."""
    if not isinstance(module, nn.MultiheadAttention):
        return f"a {type(module).__name__}, not an nn.MultiheadAttention"
    if type(module) is not nn.MultiheadAttention:
        return f"{type(module).__name__} subclasses nn.MultiheadAttention (its forward may differ)"
    if not module._qkv_same_embed_dim:
        return (f"kdim={module.kdim} / vdim={module.vdim} differ from embed_dim={module.embed_dim} "
                "(separate-width key/value projections are not supported)")
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True (learned key/value rows appended to the sequence) is not supported"
    if module.add_zero_attn:
        return "add_zero_attn=True (a zero key/value row appended to the sequence) is not supported"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks attached, which the replacement would not carry"
    return None


@dataclass
class AttentionSwap:
    """What `swap_attention` did: module names swapped, and the reason each other one was left alone."""

    swapped: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def swapped_attention(model: nn.Module) -> list[str]:
    """Names of the LinearMultiheadAttention modules in `model` (what a transform records for replay)."""
    return [name for name, m in model.named_modules() if isinstance(m, LinearMultiheadAttention)]


def swap_attention(model: nn.Module, *, names: Iterable[str] | None = None) -> AttentionSwap:
    """Replace (in place) every `nn.MultiheadAttention` of `model` that can be by a `LinearMultiheadAttention`.

    With `names` (a checkpoint replay): exactly those modules, each an nn.MultiheadAttention that must
    be swappable, or already a LinearMultiheadAttention (left as is); anything else is a BadInput.
    """
    modules = dict(model.named_modules())
    result = AttentionSwap()
    if names is None:
        targets = [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
        if "" in targets:
            result.refused[""] = "the model itself is an nn.MultiheadAttention (wrap it in a module to swap it)"
            return result
    else:
        targets = []
        for name in names:
            module = modules.get(name) if name else None
            if isinstance(module, LinearMultiheadAttention):
                continue
            if module is None or why_not_swappable(module) is not None:
                what = "no such module" if module is None else why_not_swappable(module)
                raise BadInput(f"attention swap: cannot replace '{name}' of {type(model).__name__} ({what})")
            targets.append(name)
    replacements: dict[int, nn.Module] = {}
    for name in targets:
        module = modules[name]
        reason = why_not_swappable(module)
        if reason is not None:
            result.refused[name] = reason
            continue
        if id(module) not in replacements:
            replacements[id(module)] = LinearMultiheadAttention.from_float(module)
        result.swapped.append(name)
    if not replacements:
        return result
    # Every place that holds a replaced module, shared ones included.
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(m, LinearMultiheadAttention) for m in module.layers.modules()):
            module.use_nested_tensor = False  # the nested-tensor path is for the fused layers only
    return result
