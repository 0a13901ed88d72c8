"""The composition root: every transform, directory loader and model family edgekd knows, wired here.

`register_all()` runs once when `edgekd` is imported (the CLI imports it too). Each entry is a
small function that imports its stage only when it is first used, so registering costs nothing
and `edgekd targets` never loads torch. Losses and task metrics live with their tables in
`edgekd.distill` (built-ins defined beside the registry they fill); a new transform, directory
layout or model family is added here and nowhere else.
"""

from __future__ import annotations

from edgekd import plugins


def _replay_prune(model, config: dict, state: dict):
    from edgekd.prune.reshape import reshape_to_state_dict

    return reshape_to_state_dict(model, config, state)


def _replay_fake_quant(model, config: dict, state: dict):
    from edgekd.quant.prepare import replay_transform

    return replay_transform(model, config, state)


def _hugging_face_directory(path):
    from edgekd.hf.encoder import load_model_dir

    return load_model_dir(path)


def _causal_lm_path(path):
    from edgekd.lm.loader import load_model_path

    return load_model_path(path)


def _causal_lm_family():
    from edgekd.families.causal_lm import CausalLMFamily

    return CausalLMFamily


def _text_encoder_family():
    from edgekd.families.text_encoder import TextEncoderFamily

    return TextEncoderFamily


def _array_family():
    from edgekd.families.arrays import ArrayFamily

    return ArrayFamily


def register_all() -> None:
    """Fill edgekd.plugins' tables (idempotent)."""
    plugins.register_transform("prune", _replay_prune)
    plugins.register_transform("fake-quant", _replay_fake_quant)
    plugins.register_directory_loader(_causal_lm_path)  # before the encoders: a causal-LM folder is an HF folder too
    plugins.register_directory_loader(_hugging_face_directory)
    plugins.register_family(_causal_lm_family)  # most specific first
    plugins.register_family(_text_encoder_family)
    plugins.register_family(_array_family)
