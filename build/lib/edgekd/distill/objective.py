"""The training objective a recipe describes: a weighted sum of registered losses, each bound to
the student and teacher tensors it compares (model outputs or tapped layers).

Layer pairing: an explicit `teacher_layer`, else `config.layer_map[student_layer]`, else
proportional depth over the models' blocks (the student's k-th of n blocks meets the teacher's
round(k*m/n)-th of m). A feature loss with no layers at all is applied to every mapped pair, its
weight shared equally among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgekd.distill.config import DistillConfig, LossTerm
from edgekd.distill.hooks import blocks, proportional_map, resolve_module
from edgekd.distill.losses import LOSSES, DistillLoss, build_loss
from edgekd.errors import BadInput


@dataclass
class BoundTerm:
    label: str  # how the term appears in the history, e.g. "fitnets:layer1.0->layer2.0"
    weight: float
    student_tap: str | None  # None: the model's output
    teacher_tap: str | None


class Objective(nn.Module):
    """Weighted sum of bound loss terms; an nn.Module so learned projections train and checkpoint."""

    def __init__(self, terms: list[tuple[BoundTerm, DistillLoss]]):
        super().__init__()
        self.terms = [term for term, _ in terms]
        self.losses = nn.ModuleList(loss for _, loss in terms)

    @property
    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(t.student_tap for t in self.terms if t.student_tap))

    @property
    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t.teacher_tap for t in self.terms if t.teacher_tap))

    @property
    def needs_teacher(self) -> bool:
        return any(loss.uses_teacher for loss in self.losses)

    def _pairs(self, student_out, student_feats, teacher_out, teacher_feats):
        for term, loss in zip(self.terms, self.losses):
            student = student_out if term.student_tap is None else student_feats[term.student_tap]
            teacher = None
            if loss.uses_teacher:
                teacher = teacher_out if term.teacher_tap is None else teacher_feats[term.teacher_tap]
            yield term, loss, student, teacher

    def materialize(self, student_out, student_feats, teacher_out, teacher_feats) -> None:
        """Create lazily shaped parameters from a probe batch, before the optimizer is built."""
        for _, loss, student, teacher in self._pairs(student_out, student_feats, teacher_out, teacher_feats):
            loss.materialize(student, teacher)

    def forward(self, student_out, student_feats, teacher_out, teacher_feats, labels):
        """(weighted total, {label: detached term value})."""
        total = student_out.new_zeros(())
        values = {}
        for term, loss, student, teacher in self._pairs(student_out, student_feats, teacher_out, teacher_feats):
            value = loss(student, teacher, labels)
            total = total + term.weight * value
            values[term.label] = value.detach()
        return total, values


def recipe_terms(config: DistillConfig, task: str) -> list[LossTerm]:
    """The recipe as a flat list of terms: response KD and hard-label CE from alpha/T, then the extras."""
    if not config.kd:
        if task != "classification":
            raise BadInput(f"kd=False trains on hard labels only, which a '{task}' task does not have")
        return [LossTerm("ce", 1.0)]
    terms = []
    if task == "classification":
        if config.response and config.alpha > 0:
            terms.append(LossTerm("response", config.alpha, params={"temperature": config.temperature}))
        if config.alpha < 1:
            terms.append(LossTerm("ce", 1.0 - config.alpha))
    extras = list(config.losses)
    if task != "classification" and not extras:
        extras = [LossTerm("cosine")]  # embeddings have no logits: match them by direction
    terms.extend(extras)
    if not terms:
        raise BadInput("distill config: the recipe has no loss terms (response=False, alpha=1 and no losses)")
    return terms


def _pairs_for(term: LossTerm, config: DistillConfig, student: nn.Module, teacher: nn.Module | None) -> list[tuple]:
    is_feature = LOSSES[term.name].level == "feature"
    if term.student_layer is None and term.teacher_layer is not None:
        raise BadInput(f"loss '{term.name}': teacher_layer '{term.teacher_layer}' given without a student_layer")
    if term.student_layer is None and not is_feature:
        return [(None, None)]
    if teacher is None:
        raise BadInput(f"loss '{term.name}' compares layers with a teacher, and this run has none")
    if term.student_layer is not None:
        resolve_module(student, term.student_layer, "student")
        teacher_layer = term.teacher_layer or config.layer_map.get(term.student_layer)
        if teacher_layer is None:
            student_blocks = blocks(student)
            if term.student_layer not in student_blocks:
                raise BadInput(f"loss '{term.name}': no teacher_layer for student layer '{term.student_layer}', which is "
                               "not one of the student's blocks; set teacher_layer or config.layer_map")
            teacher_layer = proportional_map(student_blocks, blocks(teacher))[term.student_layer]
        resolve_module(teacher, teacher_layer, "teacher")
        return [(term.student_layer, teacher_layer)]
    mapping = config.layer_map or _block_map(student, teacher)
    for s, t in mapping.items():
        resolve_module(student, s, "student")
        resolve_module(teacher, t, "teacher")
    return list(mapping.items())


def _block_map(student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    student_blocks, teacher_blocks = blocks(student), blocks(teacher)
    if not student_blocks or not teacher_blocks:
        who = "student" if not student_blocks else "teacher"
        raise BadInput(f"the {who} has no blocks (non-leaf children of a Sequential/ModuleList) to map feature "
                       "losses onto; name the layers (student_layer/teacher_layer or config.layer_map)")
    return proportional_map(student_blocks, teacher_blocks)


def build_objective(config: DistillConfig, task: str, student: nn.Module, teacher: nn.Module | None) -> Objective:
    """Bind every recipe term to its tensors, checking that each named layer exists."""
    bound, seen = [], set()
    for term in recipe_terms(config, task):
        pairs = _pairs_for(term, config, student, teacher)
        for s, t in pairs:
            label = term.name if s is None else f"{term.name}:{s}->{t}"
            while label in seen:
                label += "'"
            seen.add(label)
            bound.append((BoundTerm(label, term.weight / len(pairs), s, t), build_loss(term.name, dict(term.params))))
    return Objective(bound)


def combine_peers(logits: list[torch.Tensor], k: int, temperature: float) -> torch.Tensor:
    """Online mode's teacher for peer k: logits whose softmax at `temperature` is the mean of the
    other peers' softened probabilities, T * log(mean_j softmax(z_j / T)), detached."""
    others = torch.stack([z.detach() for j, z in enumerate(logits) if j != k])
    log_probs = torch.log_softmax(others / temperature, dim=-1)
    return temperature * (torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(others)))))
