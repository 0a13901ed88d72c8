"""How close a causal LM is to the real text and to its teacher: held-out perplexity and next-token top-1
agreement (the fraction of positions where the model's most likely next token is the teacher's), the two
primary metrics of the LM ablation. Agreement also predicts speculative decoding's acceptance rate under
greedy verification, where a drafted token is kept exactly when it is the teacher's argmax."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import BadInput
from edgekd.lm.losses import causal_logits, check_token_ids
from edgekd.lm.topk_cache import TopK


def agreement_from_logits(student_logits, teacher_top1) -> float:
    """Fraction of positions where argmax(student_logits [..., V]) equals teacher_top1 [...] (arrays or
    tensors, e.g. a runtime's logits against the teacher cache's `indices[..., 0]`)."""
    student_top1 = torch.as_tensor(student_logits).argmax(-1)
    teacher_top1 = torch.as_tensor(np.array(teacher_top1) if isinstance(teacher_top1, np.ndarray) else teacher_top1)
    if student_top1.shape != teacher_top1.shape or student_top1.numel() == 0:
        raise BadInput(f"student logits {tuple(student_top1.shape)} + [V] and teacher top-1 "
                       f"{tuple(teacher_top1.shape)} must cover the same non-empty positions")
    return float((student_top1 == teacher_top1.to(student_top1.dtype)).double().mean())


@torch.inference_mode()
def evaluate_lm(model: nn.Module, windows, *, teacher_topk: TopK | None = None, batch_size: int = 8) -> dict:
    """{"perplexity": exp(mean next-token NLL) over the windows (int [n, seq_len]), "top1_agreement": the
    fraction of all positions whose argmax is the teacher's top-1 (None without `teacher_topk`, which must be
    built over these windows), "tokens": how many next-token predictions the perplexity averages}."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.dtype.kind not in "iu" or windows.size == 0 or windows.shape[1] < 2:
        raise BadInput(f"windows must be a non-empty integer array [n, seq_len >= 2], got {windows.dtype} "
                       f"{windows.shape}")
    if teacher_topk is not None and teacher_topk.indices.shape[:2] != windows.shape:
        raise BadInput(f"teacher_topk covers {teacher_topk.indices.shape[:2]} positions, the windows are "
                       f"{windows.shape}: build it over these windows")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
        raise BadInput(f"batch_size must be an integer in [1, 1024], got {batch_size!r}")
    check_token_ids(model, windows, "windows")
    was_training = model.training
    model.eval()
    nll, agree = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            ids = torch.from_numpy(windows[start:start + batch_size].astype(np.int64))
            logits = causal_logits(model, ids).float()
            nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            if teacher_topk is not None:
                teacher_top1 = torch.from_numpy(teacher_topk.indices[start:start + len(ids), :, 0].astype(np.int64))
                agree += int((logits.argmax(-1) == teacher_top1).sum())
    finally:
        model.train(was_training)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    mean_nll = nll / tokens
    return {"perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,
            "top1_agreement": None if teacher_topk is None else agree / windows.size, "tokens": tokens}


def score_logits(logits, windows: np.ndarray, teacher_top1: list[np.ndarray]) -> dict:
    """Perplexity of each window's next tokens and top-1 agreement with the teacher's argmax at every position,
    from logits [L, V] per window as a runtime returned them, read one at a time from any iterable
    (edgekd.steps.generation scores exported files)."""
    nll, agree, predicted, positions = 0.0, 0, 0, 0
    for window, window_logits, top1 in zip(windows, logits, teacher_top1):
        log_probs = torch.log_softmax(torch.as_tensor(window_logits[:-1], dtype=torch.float64), dim=-1)
        nll -= float(log_probs.gather(-1, torch.as_tensor(window[1:], dtype=torch.int64)[:, None]).sum())
        predicted += len(window) - 1
        agree += int((window_logits.argmax(-1) == top1).sum())
        positions += len(top1)
    if not predicted:
        raise BadInput("score_logits: no window to score")
    mean = nll / predicted
    return {"perplexity": math.exp(mean) if mean < 700 else None,  # None: a diverged model, not an overflow
            "top1_agreement": agree / positions, "tokens": predicted}


def generation_audit(outputs: list[list[int]], *, n: int = 4) -> dict:
    """A small audit of greedy generations (new tokens per prompt): how much of them repeats (the fraction of
    n-grams seen before in the same output: a degenerate loop scores near 1), and how many are empty (EOS
    first, or nothing)."""
    repeated = total = 0
    for tokens in outputs:
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return {"repetition_rate": repeated / total if total else None, "empty_outputs": sum(len(t) <= 1 for t in outputs),
            "outputs": len(outputs), "mean_new_tokens": float(np.mean([len(t) for t in outputs])) if outputs else 0.0}
