"""Task metrics, in a registry keyed by `Dataset.task`, and `evaluate`.

A metric function takes `(outputs, y, teacher_outputs)`: the model's outputs on all samples
(a CPU tensor), the labels (numpy, -1 = unlabeled, or None) and the teacher's outputs (or None),
and returns a dict of floats holding at least its `primary` key (None when it cannot be computed,
e.g. no labels) and, when a teacher is given, `teacher_agreement`. Early stopping watches
`primary` unless the recipe names another key.

Both built-in tasks are registered here, where the table lives, so what distillation early-stops
on never depends on which other module was imported. A new task registers its metric like this::

    from edgekd.distill import register_metric

    @register_metric("ranking", primary="ndcg")
    def ranking_ndcg(outputs, y, teacher_outputs):
        ...
        return {"ndcg": value, "teacher_agreement": agreement}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.distill.embedding import embedding_task_metric
from edgekd.errors import close_matches
from edgekd.distill.inference import Collate, predict
from edgekd.errors import BadInput

MetricFn = Callable[[torch.Tensor, "np.ndarray | None", "torch.Tensor | None"], dict]


@dataclass(frozen=True)
class TaskMetric:
    primary: str
    compute: MetricFn
    higher_is_better: bool = True


METRICS: dict[str, TaskMetric] = {}


def register_metric(task: str, *, primary: str, higher_is_better: bool = True):
    """Decorator: make `fn(outputs, y, teacher_outputs) -> dict` the metric of `task`."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[task] = TaskMetric(primary, fn, higher_is_better)
        return fn

    return wrap


def task_metric(task: str) -> TaskMetric:
    if task not in METRICS:
        raise BadInput(f"no metric registered for task '{task}' ({close_matches(task, sorted(METRICS))})")
    return METRICS[task]


@register_metric("classification", primary="accuracy")
def classification_accuracy(outputs, y, teacher_outputs) -> dict:
    """Top-1 accuracy on labeled samples; teacher_agreement = share of equal top-1 predictions."""
    pred = outputs.argmax(-1).numpy()
    result: dict = {"accuracy": None}
    if y is not None and (y >= 0).any():
        labeled = y >= 0
        result["accuracy"] = float((pred[labeled] == y[labeled]).mean())
    if teacher_outputs is not None:
        result["teacher_agreement"] = float((pred == teacher_outputs.argmax(-1).numpy()).mean())
    return result


register_metric("embedding", primary="spearman")(embedding_task_metric)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray | None = None, *, teacher: nn.Module | None = None,
             task: str = "classification", collate: Collate | None = None, batch_size: int = 256) -> dict:
    """The task's metrics for `model` on `x` (and `teacher_agreement` when a teacher is given)."""
    metric = task_metric(task)
    if len(x) == 0:
        raise BadInput("evaluate: x is empty")
    if y is not None and len(y) != len(x):
        raise BadInput(f"evaluate: x has {len(x)} samples but y has {len(y)}")
    outputs = predict(model, x, collate=collate, batch_size=batch_size, role="model")
    teacher_outputs = None if teacher is None else predict(teacher, x, collate=collate, batch_size=batch_size, role="teacher")
    return metric.compute(outputs, y, teacher_outputs)
