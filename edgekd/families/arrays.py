"""Array models (images, tabular): tensors in, logits (or embeddings) out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.families.base import ModelFamily


class ArrayFamily(ModelFamily):
    name = "arrays"

    @classmethod
    def matches(cls, *, model, data) -> bool:
        return not data.is_text

    def example_input(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.data.x_val[:1]))

    def make_student(self, spec: str, *, channel_multiple: int, prune_settings, seed: int):
        from edgekd.prune import prune_with_recovery
        from edgekd.student_spec import PruneSpec, parse_student

        parsed = parse_student(spec)
        if not isinstance(parsed, PruneSpec):
            raise BadInput(f"student '{spec}': layers:N needs a Hugging Face encoder teacher and text data")
        return prune_with_recovery(teacher=self.model, data=self.data, ratio=parsed.ratio,
                                   channel_multiple=channel_multiple, importance=prune_settings.importance,
                                   global_pruning=prune_settings.global_pruning, steps=prune_settings.steps,
                                   recovery_epochs=prune_settings.recovery_epochs,
                                   ignore_layers=prune_settings.ignore_layers, seed=seed)

    def ladder(self) -> list[str]:
        """Channel ratios in eighths: each target rounds the kept widths to its channel multiple."""
        return [f"prune:{ratio / 8:g}" for ratio in range(1, 8)]

    def distill_config(self, settings: dict, *, source: str, student: nn.Module | None = None):
        from edgekd.distill import config_from_mapping

        return config_from_mapping(settings, source=source)

    def export_inputs(self, *, static_shapes: bool = False) -> dict:
        return {"example_inputs": self.example_input(), "parity_inputs": self.data.x_test, "task": self.data.task,
                "labels": self.data.y_test, "static_shapes": static_shapes}

    def runtime_inputs(self):
        return self.data.x_test, self.data.x_test[:1]

    def metric(self, outputs: np.ndarray, teacher_outputs: np.ndarray) -> dict:
        if self.data.task == "classification":
            return classification_metric(outputs, self.data.y_test, teacher_outputs)
        from edgekd.distill.embedding import embedding_agreement

        agreement = embedding_agreement(student_emb=outputs, teacher_emb=teacher_outputs)
        return {"name": "spearman_vs_teacher", "value": float(agreement["spearman"]), **agreement}


def classification_metric(outputs: np.ndarray, labels: np.ndarray | None, teacher_outputs: np.ndarray) -> dict:
    """Top-1 accuracy on the labeled held-out samples (unlabeled ones, y == -1, have no right answer to
    miss); with no labeled one, top-1 agreement with the teacher, named as such."""
    predicted = outputs.argmax(1)
    labeled = labels >= 0 if labels is not None else np.zeros(len(predicted), dtype=bool)
    if labeled.any():
        return {"name": "accuracy", "value": float((predicted[labeled] == labels[labeled]).mean()),
                "labeled_samples": int(labeled.sum())}
    return {"name": "teacher_agreement", "value": float((predicted == teacher_outputs.argmax(1)).mean())}
