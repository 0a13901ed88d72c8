"""How faithfully a student reproduces its teacher's embedding geometry: the 'embedding' task's metric.

Unlabeled data (text, typically) has no accuracy; what a sentence-embedding user relies on is the similarity
structure. Two views of it: the Spearman rank correlation of student vs teacher cosine
similarities over random text pairs (does the student order pairs like the teacher?), and
recall@k of the teacher's k nearest neighbours (does search return the same texts?).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from edgekd.errors import BadInput

DEFAULT_K = 10


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _sample_pairs(n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`pairs` distinct unordered index pairs (i < j), or every pair when there are fewer."""
    total = n * (n - 1) // 2
    flat = np.arange(total) if total <= pairs else np.random.default_rng(seed).choice(total, size=pairs, replace=False)
    # Invert the row-major enumeration of the strict upper triangle.
    i = (n - 2 - np.floor(np.sqrt(-8 * flat + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
    j = (flat + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2).astype(np.int64)
    return i, j


def embedding_agreement(*, student_emb: np.ndarray, teacher_emb: np.ndarray, pairs: int = 2000, k: int = DEFAULT_K,
                        seed: int = 0) -> dict:
    """{"spearman", "recall_at_<k>"}: student vs teacher similarity structure on the same N texts."""
    student, teacher = np.asarray(student_emb), np.asarray(teacher_emb)
    if student.ndim != 2 or teacher.ndim != 2 or len(student) != len(teacher):
        raise BadInput(f"embedding_agreement: expected [N, D] student and teacher embeddings of the same N, "
                       f"got shapes {student.shape} and {teacher.shape}")
    n = len(student)
    if n <= k:
        raise BadInput(f"embedding_agreement: {n} texts; recall@{k} needs more than {k}")
    if not (np.isfinite(student).all() and np.isfinite(teacher).all()):
        raise BadInput("embedding_agreement: the embeddings contain NaN or Inf")
    student, teacher = _unit_rows(student), _unit_rows(teacher)
    i, j = _sample_pairs(n, pairs, seed)
    rho = spearmanr((student[i] * student[j]).sum(1), (teacher[i] * teacher[j]).sum(1)).statistic
    return {"spearman": float(rho), f"recall_at_{k}": _neighbour_recall(student, teacher, k), "pairs": int(len(i)),
            "texts": n}


def _neighbour_recall(student: np.ndarray, teacher: np.ndarray, k: int, block: int = 1024) -> float:
    """Mean fraction of each text's k teacher neighbours (itself excluded) among its k student neighbours."""
    hits = 0
    for start in range(0, len(student), block):
        rows = np.arange(start, min(start + block, len(student)))
        neighbours = []
        for emb in (student, teacher):
            sims = emb[rows] @ emb.T
            sims[np.arange(len(rows)), rows] = -np.inf
            neighbours.append(np.argpartition(-sims, k, axis=1)[:, :k])
        hits += sum(len(np.intersect1d(s, t)) for s, t in zip(*neighbours))
    return hits / (len(student) * k)


def embedding_task_metric(outputs, y, teacher_outputs) -> dict:
    """The 'embedding' task's metric for distillation and evaluation: agreement with the teacher.

    Spearman is the primary figure (and `teacher_agreement`); like recall@10 it compares each
    model's own similarity structure, so it works at any embedding width. recall@10 needs more than
    10 samples, Spearman at least 3 (None below). `cosine_to_teacher` (None when the widths differ)
    is the per-sample view.
    """
    if teacher_outputs is None:
        raise BadInput("task 'embedding': agreement is measured against the teacher's embeddings; pass a teacher")
    student, teacher = outputs.float().numpy(), teacher_outputs.float().numpy()
    cosine = float((_unit_rows(student) * _unit_rows(teacher)).sum(1).mean()) if student.shape == teacher.shape else None
    result = {"spearman": None, f"recall_at_{DEFAULT_K}": None, "cosine_to_teacher": cosine}
    if len(student) >= 3:
        agreement = embedding_agreement(student_emb=student, teacher_emb=teacher, k=min(DEFAULT_K, len(student) - 1))
        result.update(spearman=agreement["spearman"], **{f"recall_at_{DEFAULT_K}": agreement.get(f"recall_at_{DEFAULT_K}")})
    result["teacher_agreement"] = result["spearman"]
    return result
