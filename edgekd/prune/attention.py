"""Multi-head self-attention as the pruner sees it: whole heads, never a slice of one.

Hugging Face BERT-style encoders (BERT, RoBERTa, ELECTRA, MiniLM, ...) keep three `nn.Linear`
projections `query`, `key`, `value` and reshape their output to `[..., heads, head_size]`
with `num_attention_heads`, `attention_head_size` and `all_head_size` attributes. Removing a
head removes the same `head_size` rows from all three projections and the matching input
columns of the output projection (the dependency graph links those), and the attributes must
follow, or the reshape splits the remaining rows into the wrong heads.

PyTorch's own `nn.MultiheadAttention` is rebuilt as `edgekd.nn_swap.LinearMultiheadAttention`
before pruning (its packed projection is one opaque layer to the dependency graph); that module
keeps `q_proj`, `k_proj`, `v_proj` and `out_proj` with `num_heads` heads of `head_dim`, and is
handled here the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgekd.nn_swap import LinearMultiheadAttention

_PROJECTIONS = ("query", "key", "value")
_SWAPPED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


@dataclass
class AttentionHeads:
    """One self-attention module: its name, the module, and the fixed width of a head."""

    name: str
    module: nn.Module
    head_size: int

    @property
    def projections(self) -> list[nn.Linear]:
        names = _SWAPPED_PROJECTIONS if isinstance(self.module, LinearMultiheadAttention) else _PROJECTIONS
        return [getattr(self.module, p) for p in names]

    @property
    def num_heads(self) -> int:
        return self.projections[0].out_features // self.head_size

    def sync(self) -> None:
        """Make the module's head bookkeeping match its (pruned) projection widths."""
        set_heads(self.module, self.num_heads)


def is_attention(module: nn.Module) -> bool:
    if isinstance(module, LinearMultiheadAttention):
        return True
    return (all(isinstance(getattr(module, p, None), nn.Linear) for p in _PROJECTIONS)
            and isinstance(getattr(module, "num_attention_heads", None), int)
            and isinstance(getattr(module, "attention_head_size", None), int))


def find_attention(model: nn.Module) -> list[AttentionHeads]:
    """Every BERT-style self-attention (and LinearMultiheadAttention) module in `model`, in module order."""
    return [AttentionHeads(name, module, _head_size(module))
            for name, module in model.named_modules() if is_attention(module)]


def _head_size(module: nn.Module) -> int:
    return module.head_dim if isinstance(module, LinearMultiheadAttention) else module.attention_head_size


def set_heads(module: nn.Module, num_heads: int) -> None:
    """Set an attention module's head count, keeping its head size."""
    if isinstance(module, LinearMultiheadAttention):
        module.num_heads = num_heads
        return
    module.num_attention_heads = num_heads
    module.all_head_size = num_heads * module.attention_head_size
