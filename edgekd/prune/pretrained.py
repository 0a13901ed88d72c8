"""Pruned Hugging Face models: `save_pretrained` carries the new shapes, `load_pretrained` reads them.

Transformers 5 removed head pruning (`config.pruned_heads`, `model.prune_heads`), and a BERT
config cannot describe fewer heads of the same size: `attention_head_size` is always
`hidden_size / num_attention_heads`. So a pruned model's config keeps `num_attention_heads`
(which fixes the head size), updates what it can describe (`num_hidden_layers`, and
`intermediate_size` when every FFN has the same width), and records the rest under
`edgekd_pruning` (the "prune" transform config: heads per attention module, conv groups).
`load_pretrained` builds the architecture from that config, reshapes it to the saved weights
and loads them; stock `from_pretrained` still works for a model with only its depth or a
uniform FFN width changed.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgekd.errors import BadInput
from edgekd.hf_files import SAFE_LOAD, SAFE_WEIGHTS, require_safetensors
from edgekd.prune.reshape import CONFIG_KEY, reshape_to_state_dict


def load_pretrained(*, path: str | Path) -> nn.Module:
    """A Hugging Face model directory saved with `save_pretrained`, pruned by edgekd or not."""
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BadInput(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(path, **SAFE_LOAD)
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{path / 'config.json'}: cannot read the model config: {str(err).splitlines()[0][:200]}") from None
    architecture = (getattr(config, "architectures", None) or [""])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if not isinstance(model_class, type) or not issubclass(model_class, transformers.PreTrainedModel):
        raise BadInput(f"{path / 'config.json'}: key 'architectures': {architecture!r} is not a transformers model class")
    spec = getattr(config, CONFIG_KEY, None)
    if spec is None:
        require_safetensors(path)
        return model_class.from_pretrained(path, **SAFE_WEIGHTS).eval()
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise BadInput(f"{path}: a pruned model needs its weights in model.safetensors (not found)")
    state = load_file(weights)
    model = model_class._from_config(config)
    reshape_to_state_dict(model, spec, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise BadInput(f"{weights}: weights do not fit the pruned {model_class.__name__} "
                       f"(missing: {', '.join(untied[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})")
    return model.eval()
