"""How edgekd opens a local Hugging Face model folder: never the network, never code or pickles.

`trust_remote_code=False` is passed explicitly, so a folder whose config points at its own
Python (`auto_map`) is refused instead of prompting mid-run; weights are read from safetensors
only, because `pytorch_model.bin` is a pickle that runs code when loaded.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import BadInput

# Keyword arguments for every transformers `from_pretrained` call edgekd makes.
SAFE_LOAD = {"local_files_only": True, "trust_remote_code": False}
SAFE_WEIGHTS = {**SAFE_LOAD, "use_safetensors": True}
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def require_safetensors(model_dir: Path) -> None:
    """BadInput for a folder whose weights exist only as a pickle (or not at all)."""
    model_dir = Path(model_dir)
    if any(model_dir.glob("*.safetensors")):
        return
    pickled = [name for name in PICKLED_WEIGHTS if (model_dir / name).is_file()]
    if pickled:
        raise BadInput(f"{model_dir / pickled[0]}: pickled PyTorch weights, which can run code when loaded; edgekd "
                       "reads safetensors only. Convert once in a session you trust: "
                       "AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
    raise BadInput(f"{model_dir}: no model.safetensors weights in this Hugging Face model folder")
