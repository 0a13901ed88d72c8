"""The distillation recipe for sentence encoders on unlabeled text, as edgekd.distill loss terms.

Three signals, each optional by weight:
- the pooled embedding (cosine or MSE): what the user consumes, the only term the metric sees;
- hidden-state hints, student block i against the teacher block `layer_map` assigns (TinyBERT);
- attention distributions of the same block pairs, KL per query row (MiniLM / TinyBERT), read
  as the second output of each self-attention module (`...attention.self#1`), which needs the
  eager attention implementation `load_sentence_encoder` uses by default.
A hint's weight is shared equally among the block pairs so adding layers does not rescale it.

Measured on all-MiniLM-L6-v2 -> layers:3 with the 10.6k training fortunes (Spearman of pair
similarities on the 2127 test fortunes; word embeddings frozen; 8 epochs unless said): cosine
only, lr 2e-4: 0.851; lr 1e-3 and no dropout: 0.872; + hidden/attention hints (weights 1, lr
5e-4): 0.874; cosine + `mix_text` augmentation, 20 epochs: 0.893; + hints, hidden weight 10:
0.900; the same (these defaults) for 36 epochs: 0.908. Without augmentation the student overfits
a corpus this small (training cosine 0.97 vs held-out 0.91), which is why the defaults below
freeze the word embeddings, replace dropout by `mix_text` and use the hints.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from torch import nn

from edgekd.distill import DistillConfig, LossTerm
from edgekd.errors import BadInput
from edgekd.hf.encoder import SentenceEncoder
from edgekd.hf.students import layer_names
from edgekd.student_spec import layer_map
from edgekd.hf.text import DEFAULT_MAX_LENGTH, TextCollate, TokenBudgetBatches

EMBEDDING_LOSSES = ("cosine", "mse")


def attention_module_name(encoder: SentenceEncoder, block: str) -> str:
    """Name of the self-attention module inside `block` (the one projecting query and key)."""
    module = encoder.get_submodule(block)
    for name, child in module.named_modules():
        if name and isinstance(getattr(child, "query", None), nn.Linear) and isinstance(getattr(child, "key", None), nn.Linear):
            return f"{block}.{name}"
    raise BadInput(f"{encoder.source_dir}: block '{block}' has no self-attention module with query/key projections "
                   f"(model_type '{encoder.config.model_type}'); attention KD supports BERT-style encoders")


def block_pairs(*, student: SentenceEncoder, teacher: SentenceEncoder) -> list[tuple[str, str]]:
    """(student block, teacher block) names, paired by `layer_map` (identity when depths agree)."""
    student_blocks, teacher_blocks = layer_names(student), layer_names(teacher)
    mapping = layer_map(teacher_layers=len(teacher_blocks), student_layers=len(student_blocks))
    return [(s, teacher_blocks[t]) for s, t in zip(student_blocks, mapping)]


def encoder_kd_terms(*, student: SentenceEncoder, teacher: SentenceEncoder, embedding_loss: str = "cosine",
                     embedding_weight: float = 1.0, hidden_weight: float = 0.0,
                     attention_weight: float = 0.0) -> list[LossTerm]:
    """Loss terms for `DistillConfig.losses`: pooled embedding + optional hidden and attention hints."""
    if embedding_loss not in EMBEDDING_LOSSES:
        raise BadInput(f"embedding_loss '{embedding_loss}': expected one of {', '.join(EMBEDDING_LOSSES)}")
    terms = [LossTerm(embedding_loss, embedding_weight)] if embedding_weight > 0 else []
    pairs = block_pairs(student=student, teacher=teacher)
    if hidden_weight > 0:
        terms += [LossTerm("mse", hidden_weight / len(pairs), student_layer=s, teacher_layer=t) for s, t in pairs]
    if attention_weight > 0:
        terms += [LossTerm("attention", attention_weight / len(pairs),
                           student_layer=f"{attention_module_name(student, s)}#1",
                           teacher_layer=f"{attention_module_name(teacher, t)}#1", params={"kind": "probs"})
                  for s, t in pairs]
    if not terms:
        raise BadInput("encoder KD: every loss weight is 0; nothing to distill")
    return terms


def _span(words: list[str], rng: np.random.Generator, shortest: int) -> list[str]:
    if len(words) <= shortest:
        return words
    size = int(rng.integers(shortest, len(words) + 1))
    start = int(rng.integers(0, len(words) - size + 1))
    return words[start:start + size]


def mix_text(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`DistillConfig.augment` for text: new in-domain inputs every epoch, labelled by the live teacher.

    Per text: 30% a random span of its words, 30% a span of it spliced to a span of another text,
    20% 15% word dropout, 20% unchanged. On a small corpus this is what keeps the student from
    memorising the teacher's answers (see the module docstring).
    """
    out = np.asarray(x).astype(object)
    for i, draw in enumerate(rng.random(len(out))):
        words = str(out[i]).split()
        if draw < 0.3:
            words = _span(words, rng, 3)
        elif draw < 0.6:
            other = str(x[int(rng.integers(len(x)))]).split()
            words = _span(words, rng, 2) + _span(other, rng, 2)
        elif draw < 0.8 and len(words) > 4:
            kept = [w for w, keep in zip(words, rng.random(len(words)) > 0.15) if keep]
            words = kept or words
        out[i] = " ".join(words)
    return out


def disable_dropout(encoder: SentenceEncoder) -> None:
    """Set every dropout to 0 (in place). KD regresses onto a deterministic teacher, so dropout only
    adds noise to the targets' fit (augmentation regularises instead); and eager attention returns
    its probabilities *after* dropout, so attention KL against randomly zeroed rows would teach noise."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(encoder.config, key):
            setattr(encoder.config, key, 0.0)


def encoder_kd_config(*, student: SentenceEncoder, teacher: SentenceEncoder, tokenizer,
                      max_length: int = DEFAULT_MAX_LENGTH, embedding_loss: str = "cosine",
                      embedding_weight: float = 1.0, hidden_weight: float = 10.0, attention_weight: float = 1.0,
                      freeze_word_embeddings: bool = True, dropout: bool = False, **overrides) -> DistillConfig:
    """A `DistillConfig` for encoder KD on unlabeled text; `overrides` set any other field (epochs, lr, ...).

    Defaults are the measured recipe (module docstring): pooled cosine + hidden hints (weight 10)
    + attention KL, `mix_text` augmentation, lr 1e-3, no dropout, word embeddings frozen (the
    student keeps the teacher's vocabulary table: two thirds of MiniLM's weights, updated only
    sparsely, and the first thing to overfit). These change `student` in place (requires_grad,
    dropout). No response (logit) term: embeddings have no class distribution. Batches group texts
    of like length under a token budget (`TokenBudgetBatches`: 3.1x the texts/s of random batches
    on fortunes, benchmarks/text_throughput.py).
    Hidden and attention hints run the teacher live: their shape follows each batch's sequence
    length and the teacher cache stores one fixed shape per sample; with both weights 0 and no
    augmentation, the pooled teacher embeddings come from the cache instead.
    """
    unknown = sorted(set(overrides) - {f.name for f in fields(DistillConfig)})
    if unknown:
        raise BadInput(f"encoder KD: unknown DistillConfig field(s) {', '.join(unknown)}")
    if dropout and attention_weight > 0:
        raise BadInput("encoder KD: attention KD needs dropout=False (eager attention returns post-dropout probabilities)")
    losses = encoder_kd_terms(student=student, teacher=teacher, embedding_loss=embedding_loss,
                              embedding_weight=embedding_weight, hidden_weight=hidden_weight,
                              attention_weight=attention_weight)
    if not dropout:
        disable_dropout(student)
    student.encoder.get_input_embeddings().weight.requires_grad_(not freeze_word_embeddings)
    epochs = overrides.get("epochs", DistillConfig.epochs)
    settings = {"response": False, "losses": losses, "collate": TextCollate(tokenizer=tokenizer, max_length=max_length),
                "batches": TokenBudgetBatches(tokenizer=tokenizer, max_length=max_length),
                "augment": mix_text, "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": min(1.0, 0.1 * epochs),
                "cache": hidden_weight == 0 and attention_weight == 0, **overrides}
    return DistillConfig(**settings)
