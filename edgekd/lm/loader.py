"""`edgekd.checkpoint.load_model(path)` for causal LMs: a Hugging Face causal-LM folder or a `.gguf` file."""

from __future__ import annotations

from pathlib import Path

from edgekd.checkpoint import LoadedModel
from edgekd.models import ModelRef


def load_model_path(path: Path) -> LoadedModel | None:
    """The causal LM at `path`, or None when `path` is not one (another loader's, or a checkpoint)."""
    from edgekd.lm.model import is_causal_lm_source, load_causal_lm

    if not is_causal_lm_source(path):
        return None
    model = load_causal_lm(path)
    return LoadedModel(model, ModelRef("edgekd.lm:causal_lm", {"path": str(path)}), [], {"lm": model.describe()})
