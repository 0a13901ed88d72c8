"""Built-in pretrained teachers for the embedded default example.

No model may be downloaded here, so the demo's teacher is trained once on real data (the
scikit-learn digits) and cached under `~/.cache/edgekd` (or `$EDGEKD_CACHE`), keyed by the
architecture, the data snapshot's hash and the seed. Later runs load it in a second.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.models import ModelRef, seed_everything

DIGITS_TEACHER_ARCH = ModelRef("edgekd.models:resnet", {"width": 32, "blocks": [1, 1, 1]})


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE", Path.home() / ".cache" / "edgekd"))


def digits_teacher(data: str = "digits16", epochs: int = 20, seed: int = 0) -> nn.Module:
    """A ResNet-style teacher trained with cross-entropy on the digits training split (cached)."""
    from edgekd.data import load_data
    from edgekd.distill import DistillConfig, distill

    dataset = load_data(data)
    path = cache_dir() / "zoo" / f"digits_teacher-w32-{dataset.sha256[:12]}-{data}-e{epochs}-s{seed}.pt"
    if path.is_file():
        model = load_checkpoint(path).model
    else:
        seed_everything(seed)  # two fresh machines train the same teacher
        model = DIGITS_TEACHER_ARCH.build()
        config = DistillConfig(epochs=epochs, kd=False, lr=3e-3, seed=seed, patience=None)
        model = distill(student=model, data=dataset, config=config, progress=True).model  # shown: it takes a while once
        save_checkpoint(path, model, ref=DIGITS_TEACHER_ARCH, meta={"trained_on": data, "epochs": epochs, "seed": seed})
    model.edgekd_ref = DIGITS_TEACHER_ARCH  # checkpoints of its students rebuild the architecture, not re-train
    return model.eval()
