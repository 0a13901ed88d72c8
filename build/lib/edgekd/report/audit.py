"""Where the student lost ground: per-class accuracy teacher vs student, and how often they disagree.

An aggregate retention of 99% can hide one class that dropped from 95% to 60%; the audit
makes that visible. Without labels it still says which of the teacher's classes the student
stopped reproducing (agreement per teacher-predicted class).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgekd.errors import BadInput


def _as_class_indices(values: np.ndarray, what: str) -> np.ndarray:
    """Class indices from either predicted labels (N,) or scores/logits (N, C)."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise BadInput(f"{what}: scores have shape {arr.shape}, need at least one class column")
        return arr.argmax(axis=1)
    if arr.ndim != 1:
        raise BadInput(f"{what}: expected class indices (N,) or scores (N, C), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise BadInput(f"{what}: class indices must be whole numbers, got non-integral floats")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise BadInput(f"{what}: class indices must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _class_label(index: int, class_names: Sequence | None) -> str:
    if class_names is None:
        return str(index)
    if index >= len(class_names):
        raise BadInput(f"class_names: class index {index} has no name (class_names has {len(class_names)} entries)")
    return str(class_names[index])


def audit(
    *,
    y_true: np.ndarray | None,
    teacher_pred: np.ndarray,
    student_pred: np.ndarray,
    class_names: Sequence | None = None,
    top: int = 3,
) -> dict:
    """Per-class teacher-vs-student accuracy, the `top` most regressed classes, and disagreement.

    Predictions are class indices (N,) or scores (N, C) (arg-maxed). Labels of -1 mark
    unlabeled samples and are left out of the accuracy figures; with no labeled sample at all
    the audit is grouped by the teacher's predicted class and reports agreement only.
    """
    if not isinstance(top, int) or top < 0:
        raise BadInput(f"top must be a non-negative integer, got {top!r}")
    teacher = _as_class_indices(teacher_pred, "teacher_pred")
    student = _as_class_indices(student_pred, "student_pred")
    if teacher.shape != student.shape:
        raise BadInput(f"teacher_pred has {teacher.shape[0]} samples but student_pred has {student.shape[0]}")
    if teacher.size == 0:
        raise BadInput("teacher_pred: no samples to audit")
    if (teacher < 0).any() or (student < 0).any():
        raise BadInput("teacher_pred/student_pred: predicted class indices must be >= 0")

    labels = None
    if y_true is not None:
        if np.ndim(y_true) != 1 or len(y_true) != teacher.size:
            raise BadInput(f"y_true has shape {np.shape(y_true)}, expected ({teacher.size},)")
        labels = _as_class_indices(y_true, "y_true")
        if (labels < -1).any():
            raise BadInput("y_true: labels must be class indices >= 0, or -1 for unlabeled samples")
    labeled = labels is not None and bool((labels >= 0).any())

    result = {
        "labeled": labeled,
        "metric": "accuracy" if labeled else "agreement",
        "grouped_by": "true class" if labeled else "teacher prediction",
        "n_samples": int(teacher.size),
        "n_labeled": int((labels >= 0).sum()) if labels is not None else 0,
        "disagreement_rate": float((teacher != student).mean()),
    }
    if labeled:
        keep = labels >= 0
        y, t, s = labels[keep], teacher[keep], student[keep]
        per_class = []
        for cls in np.unique(y):
            in_class = y == cls
            teacher_acc = float((t[in_class] == cls).mean())
            student_acc = float((s[in_class] == cls).mean())
            per_class.append({
                "class": int(cls),
                "name": _class_label(int(cls), class_names),
                "support": int(in_class.sum()),
                "teacher": teacher_acc,
                "student": student_acc,
                "delta": student_acc - teacher_acc,
                "agreement": float((t[in_class] == s[in_class]).mean()),
            })
        result.update({
            "teacher_accuracy": float((t == y).mean()),
            "student_accuracy": float((s == y).mean()),
            # Samples the student got right where the teacher was wrong, and the reverse.
            "fixed": int(((t != y) & (s == y)).sum()),
            "broken": int(((t == y) & (s != y)).sum()),
        })
        regressed = sorted((row for row in per_class if row["delta"] < 0), key=lambda r: (r["delta"], r["class"]))
    else:
        per_class = []
        for cls in np.unique(teacher):
            in_class = teacher == cls
            per_class.append({
                "class": int(cls),
                "name": _class_label(int(cls), class_names),
                "support": int(in_class.sum()),
                "agreement": float((student[in_class] == cls).mean()),
            })
        regressed = []
    least_agreement = sorted((row for row in per_class if row["agreement"] < 1), key=lambda r: (r["agreement"], r["class"]))
    result.update({
        "per_class": per_class,
        "regressed": regressed[:top],
        "least_agreement": least_agreement[:top],
    })
    return result
