"""Multi-head self-attention as the pruner sees it: whole heads, never a slice of one.

Hugging Face BERT-style encoders (BERT, RoBERTa, ELECTRA, MiniLM, ...) keep three `nn.Linear`
projections `query`, `key`, `value` and reshape their output to `[..., heads, head_size]`
with `num_attention_heads`, `attention_head_size` and `all_head_size` attributes. Removing a
head removes the same `head_size` rows from all three projections and the matching input
columns of the output projection (the dependency graph links those), and the attributes must
follow, or the reshape splits the remaining rows into the wrong heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_PROJECTIONS = ("query", "key", "value")


@dataclass
class AttentionHeads:
    """One self-attention module: its name, the module, and the fixed width of a head."""

    name: str
    module: nn.Module
    head_size: int

    @property
    def projections(self) -> list[nn.Linear]:
        return [getattr(self.module, p) for p in _PROJECTIONS]

    @property
    def num_heads(self) -> int:
        return self.module.query.out_features // self.head_size

    def sync(self) -> None:
        """Make the module's head bookkeeping match its (pruned) projection widths."""
        set_heads(self.module, self.num_heads)


def is_attention(module: nn.Module) -> bool:
    return (all(isinstance(getattr(module, p, None), nn.Linear) for p in _PROJECTIONS)
            and isinstance(getattr(module, "num_attention_heads", None), int)
            and isinstance(getattr(module, "attention_head_size", None), int))


def find_attention(model: nn.Module) -> list[AttentionHeads]:
    """Every BERT-style self-attention module in `model`, in module order."""
    return [AttentionHeads(name, module, module.attention_head_size)
            for name, module in model.named_modules() if is_attention(module)]


def set_heads(module: nn.Module, num_heads: int) -> None:
    """Set a BERT-style attention module's head count, keeping its head size."""
    module.num_attention_heads = num_heads
    module.all_head_size = num_heads * module.attention_head_size
