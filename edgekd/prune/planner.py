"""How many channels, neurons and heads each coupled group keeps, and which ones.

Torch-Pruning's `DependencyGraph` finds the groups (every layer whose channels must go
together: a residual sum, a concat's slices, a depthwise conv and its batch norm, q/k/v and
the output projection of an attention) and prunes them; its importance classes score them.
The planner decides the counts, because Torch-Pruning 1.6.1's `BasePruner` gets three of them
wrong for edge use (measured on a tiny BERT and a three-conv net, see the package docstring):

- `round_to` floors the kept count, so 12 of 24 channels at multiple 16 floors to 0, the group
  is rejected and stays at 24 (not a multiple of 16); here the kept count is rounded to the
  nearest multiple, never below one multiple.
- iterative head pruning applies the cumulative ratio to the *current* head count: 4 heads at
  0.5 in 2 steps ends with 1, not 2; here every target is relative to the initial count.
- a head ratio that rounds up to all heads (0.9 of 4) silently prunes none; here at least
  one head always stays.

Heads are ranked within their own attention module even under global pruning, so every layer
keeps the same head count, which is what a Hugging Face config can describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgekd.prune.attention import AttentionHeads

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


def round_kept(target: float, multiple: int, current: int) -> int:
    """Kept count nearest `target` that is a positive multiple of `multiple`, at most `current`."""
    if current <= multiple:
        return current
    kept = max(multiple, multiple * math.floor(target / multiple + 0.5))
    return min(kept, current)


@dataclass
class GroupPlan:
    """One coupled group across pruning steps, keyed by its root layer's name."""

    name: str
    kind: str  # "channels" or "heads"
    modules: list[str]  # layers whose outputs the group prunes
    initial: int  # channels per channel group, or heads, before pruning
    channel_groups: int = 1  # > 1 for grouped convolutions: every group keeps the same channels
    attention: AttentionHeads | None = None
    kept_heads: list[int] = field(default_factory=list)  # original indices of the heads still there


@dataclass
class _Candidate:
    plan: GroupPlan
    root: nn.Module
    handler: object
    scores: torch.Tensor  # one score per prunable unit (channel, channel slot of a group, or head)


class Planner:
    """Prunes a traced model step by step to `ratio` of its initial width (heads: `head_ratio`), group by group."""

    def __init__(self, *, model: nn.Module, graph: tp.DependencyGraph, protected: list[nn.Module],
                 attention: list[AttentionHeads], scorer, fallback_scorer, channel_multiple: int,
                 global_pruning: bool, prune_heads: bool):
        self.model, self.graph, self.protected = model, graph, protected
        self.head_owner = {proj: att for att in attention for proj in att.projections}
        self.scorer, self.fallback_scorer = scorer, fallback_scorer
        self.channel_multiple, self.global_pruning, self.prune_heads = channel_multiple, global_pruning, prune_heads
        self.plans: dict[str, GroupPlan] = {}

    def step(self, ratio: float, *, head_ratio: float) -> None:
        names = {module: name for name, module in self.model.named_modules()}
        candidates = [c for group in self.graph.get_all_groups(ignored_layers=self.protected, root_module_types=ROOT_TYPES)
                      if (c := self._candidate(group, names)) is not None]
        heads = [c for c in candidates if c.plan.kind == "heads"]
        channels = [c for c in candidates if c.plan.kind == "channels"]
        keep = {id(c): self._heads_to_keep(c, head_ratio) for c in heads}
        keep.update(self._global_keep(channels, ratio) if self.global_pruning
                    else {id(c): self._local_keep(c, ratio) for c in channels})
        for candidate in candidates:
            self._prune(candidate, keep[id(candidate)])

    def _candidate(self, group, names) -> _Candidate | None:
        root, handler = group[0].dep.target.module, group[0].dep.handler
        outputs = [dep.target.module for dep, _ in group if self.graph.is_out_channel_pruning_fn(dep.handler)]
        owners = {id(self.head_owner[m]): self.head_owner[m] for m in outputs if m in self.head_owner}
        if owners and (not self.prune_heads or len(owners) > 1 or root not in self.head_owner):
            return None  # never cut inside a head: the head size must stay the reshape's
        scores = self.scorer(group)
        if scores is None:
            scores = self.fallback_scorer(group)
        if scores is None:
            return None
        name = names[root]
        plan = self.plans.get(name)
        if plan is None:
            plan = self._new_plan(name, group, outputs, names, next(iter(owners.values()), None))
            self.plans[name] = plan
        if plan.kind == "heads":
            scores = scores.view(plan.attention.num_heads, -1).mean(1)
        else:
            scores = scores.view(plan.channel_groups, -1).mean(0)
        return _Candidate(plan, root, handler, scores.detach().cpu())

    def _new_plan(self, name, group, outputs, names, attention) -> GroupPlan:
        modules = [names[m] for m in outputs if m in names]
        if attention is not None:
            return GroupPlan(name, "heads", modules, attention.num_heads, attention=attention,
                             kept_heads=list(range(attention.num_heads)))
        channel_groups = self._channel_groups(group)
        return GroupPlan(name, "channels", modules, self.graph.get_out_channels(group[0].dep.target.module) // channel_groups,
                         channel_groups=channel_groups)

    def _channel_groups(self, group) -> int:
        """How many equal channel groups the group's grouped convolutions (not depthwise) impose."""
        counts = [1]
        for dep, _ in group:
            module = dep.target.module
            pruner = self.graph.get_pruner_of_module(module)
            if pruner is None or (isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels):
                continue
            out = self.graph.is_out_channel_pruning_fn(dep.handler)
            counts.append((pruner.get_out_channel_groups if out else pruner.get_in_channel_groups)(module) or 1)
        return max(counts)

    def _unit_multiple(self, plan: GroupPlan) -> int:
        """Units to keep in steps of this many, so kept channels are a multiple of channel_multiple."""
        return self.channel_multiple // math.gcd(self.channel_multiple, plan.channel_groups)

    def _heads_to_keep(self, candidate: _Candidate, ratio: float) -> int:
        target = max(1, math.floor(candidate.plan.initial * (1 - ratio) + 0.5))
        return min(target, len(candidate.scores))

    def _local_keep(self, candidate: _Candidate, ratio: float) -> int:
        plan = candidate.plan
        return round_kept(plan.initial * (1 - ratio), self._unit_multiple(plan), len(candidate.scores))

    def _global_keep(self, candidates: list[_Candidate], ratio: float) -> dict[int, int]:
        """Rank every channel of every group together; each group keeps its share, then rounds it."""
        if not candidates:
            return {}
        scores = torch.cat([c.scores for c in candidates])
        owner = torch.cat([torch.full((len(c.scores),), i) for i, c in enumerate(candidates)])
        budget = math.floor(sum(c.plan.initial for c in candidates) * (1 - ratio) + 0.5)
        top = owner[torch.argsort(scores, descending=True)[:budget]]
        counts = torch.bincount(top, minlength=len(candidates)).tolist()
        return {id(c): round_kept(counts[i], self._unit_multiple(c.plan), len(c.scores)) for i, c in enumerate(candidates)}

    def _prune(self, candidate: _Candidate, keep: int) -> None:
        plan, scores = candidate.plan, candidate.scores
        drop = sorted(torch.argsort(scores)[: len(scores) - keep].tolist())
        if not drop:
            return
        if plan.kind == "heads":
            size = plan.attention.head_size
            idxs = [head * size + i for head in drop for i in range(size)]
            plan.kept_heads = [h for i, h in enumerate(plan.kept_heads) if i not in set(drop)]
        else:
            slot = len(scores)
            idxs = [g * slot + unit for g in range(plan.channel_groups) for unit in drop]
        self.graph.get_pruning_group(candidate.root, candidate.handler, idxs).prune()
