"""Token-level KD on the teacher's cached top-k logits, and the next-token cross-entropy it is blended with.

The teacher's distribution at temperature T is known exactly on its top-k tokens; the rest of the
vocabulary is one tail bucket holding the remaining mass. The student's distribution is gathered at the same
k tokens plus its own tail bucket, so both are distributions over k + 1 outcomes and any divergence between
them is exact (with k = V it is the full-vocabulary divergence). Mass outside the teacher's top-32 is small
for a trained LM, so the bucket keeps the student from dumping probability there without storing all V.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from edgekd.errors import BadInput

DIVERGENCES = ("forward", "reverse", "jsd")
# Both tail buckets are floored at this mass. The teacher's tail is 1 - the sum of its top-k probabilities,
# which the cache's float16 log-probabilities resolve to ~1e-4 at best; below that it is rounding noise, and an
# unfloored noise tail of 1e-6 against an empty student tail (k = V) would add 1e-6 * log(1e-6 / 0) per
# position. With both floored, an empty or unresolvable tail contributes 0 and never a NaN or infinite gradient.
TAIL_FLOOR = 1e-4


def causal_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """[b, s, V] logits from a Hugging Face causal LM (its `.logits`, built without a KV cache) or from any
    module whose forward(input_ids, attention_mask=None) returns logits."""
    if isinstance(model, PreTrainedModel):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    else:
        out = model(input_ids, attention_mask=attention_mask)
    logits = getattr(out, "logits", out)
    if not torch.is_tensor(logits) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise BadInput(f"the model returned {shape} for input_ids {tuple(input_ids.shape)}; a causal LM must "
                       "return logits [batch, seq, vocab] (or an object with .logits)")
    return logits


def check_token_ids(model: nn.Module, ids: np.ndarray, what: str) -> None:
    """BadInput, naming `what`, when token ids fall outside the model's vocabulary (an embedding lookup would
    fail with a bare IndexError, or worse, an exported graph would read out of bounds)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise BadInput(f"{what} hold token ids {low}..{high}, outside the model's vocabulary "
                       f"[0, {vocab if vocab is not None else '...'}): tokenized with another tokenizer?")


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t, over targets where `target_mask`
    ([b, s], marking the tokens to predict) is set; all of them without a mask."""
    targets = input_ids[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    if target_mask is None:
        return losses.mean()
    weights = target_mask[:, 1:].flatten().to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


def _bucket_log_probs(top_log_probs: torch.Tensor, tail_log_prob: torch.Tensor) -> torch.Tensor:
    return torch.cat([top_log_probs, tail_log_prob.clamp(min=math.log(TAIL_FLOOR)).unsqueeze(-1)], dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def topk_kd_loss(student_logits: torch.Tensor, topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *,
                 temperature: float, divergence: str = "forward", mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * divergence between the teacher's and the student's (top-k + tail) distributions at temperature T,
    averaged over the positions where `mask` [b, s] is set (all without one).

    `topk` is (values [b, s, k]: the teacher's logits / T at its top-k tokens, indices [b, s, k], logsumexp
    [b, s]: of all the teacher's logits / T). `divergence`: "forward" KL(teacher || student), the usual KD,
    mass-covering; "reverse" KL(student || teacher), mode-seeking; "jsd" the Jensen-Shannon divergence
    (symmetric, bounded by log 2). T^2 keeps the gradient's scale independent of T (Hinton et al.).
    """
    if divergence not in DIVERGENCES:
        raise BadInput(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if not temperature > 0:
        raise BadInput(f"temperature must be > 0, got {temperature!r}")
    values, indices, logsumexp = topk
    if (values.shape != indices.shape or values.shape[:2] != student_logits.shape[:2]
            or logsumexp.shape != values.shape[:2] or values.shape[-1] > student_logits.shape[-1]):
        raise BadInput(f"teacher top-k values {tuple(values.shape)}, indices {tuple(indices.shape)} and logsumexp "
                       f"{tuple(logsumexp.shape)} do not fit student logits {tuple(student_logits.shape)}")
    # The k + 1 buckets are computed in float64 (they are small: [b, s, k + 1]): with k near V, float32
    # rounding of the teacher's tail (1 - a sum of k probabilities) would be all of it, and the divergence's
    # sum would drift from the full-vocabulary one by ~1e-5.
    indices = indices.long()
    teacher_top = values.double() - logsumexp.double().unsqueeze(-1)
    teacher_tail = (1.0 - teacher_top.exp().sum(-1)).clamp(min=0.0).log()
    log_p = _bucket_log_probs(teacher_top, teacher_tail)

    scaled = student_logits.float() / temperature
    student_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    student_top = scaled.gather(-1, indices).double() - student_norm.double()
    # The student's tail as a log-sum-exp over the tokens outside the top-k (not log(1 - sum q), which cancels
    # catastrophically when the top-k hold nearly all the mass); a finite fill keeps an empty tail's gradient finite.
    rest = scaled.scatter(-1, indices, torch.finfo(scaled.dtype).min)
    student_tail = torch.logsumexp(rest, dim=-1).double() - student_norm.squeeze(-1).double()
    log_q = _bucket_log_probs(student_top, student_tail)

    if divergence == "forward":
        per_position = _kl(log_p, log_q)
    elif divergence == "reverse":
        per_position = _kl(log_q, log_p)
    else:
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        per_position = 0.5 * _kl(log_p, log_m) + 0.5 * _kl(log_q, log_m)
    per_position = per_position.float() * temperature ** 2
    if mask is None:
        return per_position.mean()
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)
