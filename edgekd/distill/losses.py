"""Distillation losses, registered by name so a recipe can compose them as a weighted sum.

Every loss is an `nn.Module` called as `loss(student, teacher, labels)` on a pair of tensors:
model outputs (logits or embeddings) for output-level losses, tapped features for feature-level
ones. Teacher tensors never receive gradients. Losses that need learned parameters (the FitNets
regressor) create them lazily from the first shapes they see; the trainer calls `materialize`
on a probe batch so those parameters exist before the optimizer is built.

Register a new loss with `@register_loss("name")` on an `DistillLoss` subclass; its constructor's
keyword arguments are what `LossTerm.params` may set.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import BadInput, close_matches

LOSSES: dict[str, type["DistillLoss"]] = {}


def register_loss(name: str):
    """Class decorator: make a `DistillLoss` available to recipes as `LossTerm(name=...)`."""

    def wrap(cls):
        cls.registry_name = name
        LOSSES[name] = cls
        return cls

    return wrap


def build_loss(name: str, params: dict) -> "DistillLoss":
    """Instantiate a registered loss, naming any parameter it does not take."""
    if name not in LOSSES:
        raise BadInput(f"unknown loss '{name}' ({close_matches(name, sorted(LOSSES))})")
    cls = LOSSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise BadInput(f"loss '{name}': unknown params {', '.join(unknown)} (it takes: {', '.join(accepted) or 'none'})")
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise BadInput(f"loss '{name}': bad params {params}: {err}") from None


class DistillLoss(nn.Module):
    """Base of registered losses. `level` is 'output' (model outputs) or 'feature' (tapped layers)."""

    registry_name: ClassVar[str] = ""
    level: ClassVar[str] = "output"
    uses_teacher: ClassVar[bool] = True

    def materialize(self, student: torch.Tensor, teacher: torch.Tensor | None) -> None:
        """Create shape-dependent parameters and settings from a probe pair (default: nothing)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


@register_loss("response")
class ResponseKD(DistillLoss):
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean. T^2 keeps the soft-target
    gradient, T * (p_s - p_t), about as large as a hard-label gradient whatever T is."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        self.temperature = float(temperature)

    def forward(self, student, teacher, labels):
        t = self.temperature
        if student.shape != teacher.shape:
            raise BadInput(f"response KD: student logits {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
        log_p_s = F.log_softmax(student / t, dim=-1)
        log_p_t = F.log_softmax(teacher.detach() / t, dim=-1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * t * t


@register_loss("ce")
class HardLabelCE(DistillLoss):
    """Cross-entropy over labeled samples only (label -1 = unlabeled); zero when a batch has none."""

    uses_teacher = False

    def forward(self, student, teacher, labels):
        if labels is None:
            return student.sum() * 0.0
        labeled = labels >= 0
        if not bool(labeled.any()):
            return student.sum() * 0.0  # keeps the graph whole so every parameter still gets a gradient
        return F.cross_entropy(student[labeled], labels[labeled])


class Projection(nn.Module):
    """Student feature -> teacher feature shape: 1x1 conv for [B,C,H,W] (then bilinear resize if the
    maps differ in size), linear on the last dim for [B,D] and [B,L,D]; identity when not needed."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, *, always: bool):
        super().__init__()
        s, t = tuple(student_shape), tuple(teacher_shape)
        if len(s) != len(t) or len(s) not in (2, 3, 4):
            raise BadInput(f"cannot project a student feature of shape {s} onto a teacher feature of shape {t}")
        if len(s) == 3 and s[1] != t[1]:
            raise BadInput(f"student feature {s} and teacher feature {t} differ in sequence length")
        self.size = t[2:] if len(s) == 4 else None
        channel = 1 if len(s) == 4 else -1
        if not always and s[channel] == t[channel]:
            self.layer = nn.Identity()
        elif len(s) == 4:
            self.layer = nn.Conv2d(s[1], t[1], kernel_size=1)
        else:
            self.layer = nn.Linear(s[-1], t[-1])

    def forward(self, x):
        x = self.layer(x)
        if self.size is not None and tuple(x.shape[2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class _Regression(DistillLoss):
    """Shared body of the regression losses: project the student, then compare with `distance`."""

    always_project: ClassVar[bool] = False

    def __init__(self):
        super().__init__()
        self.projection: Projection | None = None

    def materialize(self, student, teacher):
        if self.projection is None:
            self.projection = Projection(student.shape, teacher.shape, always=self.always_project).to(student.device)

    def forward(self, student, teacher, labels):
        self.materialize(student, teacher)
        return self.distance(self.projection(student), teacher.detach())

    def distance(self, student, teacher):
        raise NotImplementedError


@register_loss("mse")
class MSE(_Regression):
    """Mean squared error on outputs or features (projected only if the shapes differ)."""

    def distance(self, student, teacher):
        return F.mse_loss(student, teacher)


@register_loss("fitnets")
class FitNets(MSE):
    """FitNets hint: MSE between a learned 1x1-conv / linear regression of the student feature and the teacher's."""

    level = "feature"
    always_project = True


@register_loss("cosine")
class Cosine(_Regression):
    """1 - cosine similarity per sample, batch mean (projected only if the shapes differ)."""

    def distance(self, student, teacher):
        return 1.0 - F.cosine_similarity(_flat(student), _flat(teacher), dim=1).mean()


@register_loss("attention")
class AttentionTransfer(DistillLoss):
    """Attention transfer for both families.

    kind 'spatial' (CNN features [B,C,H,W], Zagoruyko & Komodakis): maps mean_c |f|^p, flattened and
    L2-normalised per sample, compared by mean squared difference; maps of different size are pooled
    to the smaller one. kind 'probs' (transformer attention probabilities [B,heads,L,L]): KL(teacher
    || student) per query row, mean over batch, heads and rows; unequal head counts are matched by
    `heads`: 'auto' (head to head when the counts agree, else 'average'), 'average' (mean over heads
    on both sides) or 'group' (teacher heads averaged in contiguous groups, one per student head).
    kind 'auto' picks 'probs' when the student's last
    dimension holds probability rows. Hugging Face modules return the probabilities after attention
    dropout, so train a student distilled this way with attention_probs_dropout_prob=0.
    """

    level = "feature"

    def __init__(self, kind: str = "auto", p: float = 2.0, heads: str = "auto", eps: float = 1e-8):
        super().__init__()
        if kind not in ("auto", "spatial", "probs") or heads not in ("auto", "average", "group"):
            raise ValueError("kind must be auto|spatial|probs and heads auto|average|group")
        self.kind, self.p, self.heads, self.eps = kind, float(p), heads, float(eps)

    def materialize(self, student, teacher):
        if student.dim() != 4 or teacher.dim() != 4:
            raise BadInput(f"attention transfer needs 4-D features ([B,C,H,W] maps or [B,heads,L,L] probabilities), "
                           f"got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
        if self.kind != "auto":
            return
        is_probs = (
            student.dim() == 4 and student.shape[-1] == student.shape[-2] and bool((student >= 0).all())
            and bool(torch.allclose(student.sum(-1), torch.ones((), dtype=student.dtype), atol=1e-3))
        )
        self.kind = "probs" if is_probs else "spatial"

    def forward(self, student, teacher, labels):
        self.materialize(student, teacher)
        teacher = teacher.detach()
        return self._probs(student, teacher) if self.kind == "probs" else self._spatial(student, teacher)

    def _spatial(self, student, teacher):
        a_s, a_t = student.abs().pow(self.p).mean(1), teacher.abs().pow(self.p).mean(1)
        if a_s.shape[1:] != a_t.shape[1:]:
            size = tuple(min(i, j) for i, j in zip(a_s.shape[1:], a_t.shape[1:]))
            a_s = F.adaptive_avg_pool2d(a_s.unsqueeze(1), size).squeeze(1)
            a_t = F.adaptive_avg_pool2d(a_t.unsqueeze(1), size).squeeze(1)
        return (F.normalize(_flat(a_s), dim=1) - F.normalize(_flat(a_t), dim=1)).pow(2).mean()

    def _probs(self, student, teacher):
        hs, ht = student.shape[1], teacher.shape[1]
        if student.shape[2:] != teacher.shape[2:]:
            raise BadInput(f"attention maps differ in length: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
        if self.heads == "group":
            if ht % hs:
                raise BadInput(f"attention heads='group' needs teacher heads ({ht}) divisible by student heads ({hs})")
            teacher = teacher.reshape(teacher.shape[0], hs, ht // hs, *teacher.shape[2:]).mean(2)
        elif self.heads == "average" or hs != ht:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        kl = torch.xlogy(teacher, teacher) - teacher * torch.log(student.clamp_min(self.eps))
        return kl.sum(-1).mean()


def _normalized_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances (zero diagonal) divided by their mean over distinct pairs."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp_min(eps).sqrt()
    d = d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))
    return d / (d.sum() / (len(e) * (len(e) - 1))).clamp_min(eps)


@register_loss("rkd_distance")
class RKDDistance(DistillLoss):
    """Relational KD, distance-wise (Park et al. 2019): Huber loss between the student's and the
    teacher's pairwise distance matrices, each divided by its mean distance over distinct pairs
    (so collapsed embeddings give a finite loss, not 0/0)."""

    def forward(self, student, teacher, labels):
        if len(student) < 2:
            return student.sum() * 0.0
        with torch.no_grad():
            d_t = _normalized_distances(_flat(teacher).float())
        return F.smooth_l1_loss(_normalized_distances(_flat(student)), d_t)


@register_loss("rkd_angle")
class RKDAngle(DistillLoss):
    """Relational KD, angle-wise: Huber loss between the cosines of the angles every sample
    triple forms, cos(angle at i between j and k), for student and teacher."""

    def forward(self, student, teacher, labels):
        if len(student) < 3:
            return student.sum() * 0.0
        with torch.no_grad():
            a_t = self._angles(_flat(teacher).float())
        return F.smooth_l1_loss(self._angles(_flat(student)), a_t)

    @staticmethod
    def _angles(e):
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[i, j] = unit(e_j - e_i)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)
