"""The model-family seam: what differs between arrays (images, tabular) and text encoders (and, next,
causal language models), behind one interface the pipeline steps and CLI commands call.

A family is chosen once from (model, data) by `edgekd.families.family_for`; nothing outside the
families branches on the kind of model. Each family owns its example inputs and collate, the
student specs it makes (`prune:R`, `layers:N`), its KD recipe, how it is exported and fed to the
runtimes, its task metric, and the extra artifacts a deployed student ships with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.data import Dataset
from edgekd.errors import BadInput


class ModelFamily(ABC):
    """One kind of model on one dataset. `model` is the family's reference model: the teacher of a
    run, or the model an `edgekd export` writes (text encoders take their tokenizer from it)."""

    name: str = "?"
    generates: bool = False  # models that generate text run edgekd.pipeline.compress_generative's six steps

    def __init__(self, *, model: nn.Module, data: Dataset, label: str = "the model"):
        self.model = model
        self.data = data

    @classmethod
    @abstractmethod
    def matches(cls, *, model: nn.Module | None, data: Dataset) -> bool:
        """Whether this family handles `data` (and `model`, when one is given)."""

    # ---- inputs
    @abstractmethod
    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One input batch the model takes (for tracing, pruning and export)."""

    def collate(self):
        """How distill batches samples (None: the default tensor collate)."""
        return None

    def check_model_takes_data(self, model_label: str, data_label: str) -> None:
        """A model made for other data fails here, naming both, rather than deep inside a stage."""
        example = self.example_input()
        inputs = example if isinstance(example, tuple) else (example,)
        try:
            with torch.no_grad():
                self.model.eval()(*inputs)
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
            raise BadInput(f"{model_label} does not take {data_label} samples (shape {shapes}): "
                           f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None

    # ---- students
    @abstractmethod
    def make_student(self, spec: str, *, channel_multiple: int, prune_settings, seed: int):
        """The student a `prune:R` / `layers:N` spec names, made from the teacher (`self.model`):
        an object with `.model`, `.transform` (the checkpoint step) and `.report`."""

    @abstractmethod
    def ladder(self) -> list[str]:
        """Candidate student specs for a budget search (`edgekd profile`), most capable first."""

    # ---- training
    def trains_without_teacher(self) -> bool:
        """Whether the no-KD baseline has a training signal (labels) of its own."""
        return True

    @abstractmethod
    def distill_config(self, settings: dict, *, source: str, student: nn.Module | None = None):
        """The DistillConfig for `settings` (the recipe's distill section, validated)."""

    def qat_distill_config(self, config, *, student: nn.Module):
        """The KD config for QAT, in which the FP32 `student` teaches its own fake-quant copy."""
        return config

    def times_layer_choices(self) -> bool:
        """Whether the latency-aware quantizer can time this family's models (single-input models)."""
        return True

    def ptq_smooth_alpha(self) -> float | None:
        """SmoothQuant strength for post-training quantization of this family's models (None: none): where
        activation outlier channels stretch per-tensor INT8 grids, as in transformers."""
        return None

    # ---- export and runtimes
    def export_view(self, model: nn.Module) -> nn.Module:
        """What is exported for `model`."""
        return model

    @abstractmethod
    def export_inputs(self, *, static_shapes: bool = False) -> dict:
        """Keyword arguments for edgekd.export.export: example and parity inputs (labels, names, axes),
        and whether shapes are fixed (a target's `static_shapes`, where the family can honour it)."""

    @abstractmethod
    def runtime_inputs(self) -> tuple[np.ndarray | dict, np.ndarray | dict]:
        """(held-out test inputs, one sample to time) as the exported artifacts take them."""

    def write_deployable_extras(self, *, out_dir: Path, model: nn.Module, export_result) -> None:
        """Files a deployed student ships with beside its model (none by default)."""

    # ---- metric
    @abstractmethod
    def metric(self, outputs: np.ndarray, teacher_outputs: np.ndarray) -> dict:
        """{"name", "value", ...}: the task metric of an exported variant's held-out outputs."""
