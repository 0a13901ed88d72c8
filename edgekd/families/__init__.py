"""Model families behind one seam (edgekd.families.base.ModelFamily), chosen once from (model, data).

Adding a family (causal language models next) means a module here and its registration in
edgekd.registry; the pipeline and the CLI only ever call `family_for`.
"""

from __future__ import annotations

from torch import nn

from edgekd import plugins
from edgekd.data import Dataset
from edgekd.errors import BadInput
from edgekd.families.base import ModelFamily

__all__ = ["ModelFamily", "family_for"]


def family_for(*, model: nn.Module, data: Dataset, label: str = "the teacher") -> ModelFamily:
    """The family that handles `data` with `model` (the teacher, or the model being exported, named
    `label` in errors)."""
    for load in plugins.FAMILIES:  # most specific first; the array family takes any non-text data
        family = load()
        if family.matches(model=model, data=data):
            return family(model=model, data=data, label=label)
    raise BadInput(f"no model family handles --data {data.name} with {type(model).__name__}")
