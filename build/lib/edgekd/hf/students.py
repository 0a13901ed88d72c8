"""Students cut from a transformer teacher: `layers:N` keeps N of its blocks (DistilBERT-style).

Layer choice: student block i starts as teacher block `layer_map(...)[i]`, evenly spaced over
the teacher's blocks *including both ends* (6 -> 3 keeps 0, 3, 5). The first block is the one
adapted to the raw embeddings, the last one writes the space the pooled embedding lives in;
keeping both makes the untrained student much closer to the teacher. Measured on
all-MiniLM-L6-v2 before any training (300-600 held-out fortunes, Spearman of pair similarities):
0,3,5 -> 0.56-0.57; 0,2,5 -> 0.55; 0,2,4 (DistilBERT's every other) -> 0.40; 1,3,5 (TinyBERT's
uniform m*L/N) -> 0.39. The same map pairs student and teacher layers for hidden-state and
attention hints.
"""

from __future__ import annotations

from torch import nn

from edgekd.errors import BadInput
from edgekd.hf.encoder import SentenceEncoder
from edgekd.prune import PruneResult, drop_layers, prune


def layer_map(*, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher block index for each student block: evenly spaced from the first to the last block."""
    if not 1 <= student_layers <= teacher_layers:
        raise BadInput(f"layers:{student_layers}: the teacher has {teacher_layers} layers; "
                       f"a student needs between 1 and {teacher_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(i * step + 0.5) for i in range(student_layers)]


def transformer_layers(encoder: SentenceEncoder) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the transformer blocks, found by the config's layer count."""
    count = encoder.config.num_hidden_layers
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name.startswith("encoder."):
            return name, module
    raise BadInput(f"{encoder.source_dir}: found no list of {count} transformer layers in the model "
                   f"(model_type '{encoder.config.model_type}')")


def layer_names(encoder: SentenceEncoder) -> list[str]:
    """Qualified module names of the transformer blocks, for feature hooks."""
    name, layers = transformer_layers(encoder)
    return [f"{name}.{i}" for i in range(len(layers))]


def layer_student(*, teacher: SentenceEncoder, num_layers: int) -> PruneResult:
    """A copy of `teacher` keeping `num_layers` blocks chosen by `layer_map`; the teacher is untouched.

    Returns edgekd.prune's `PruneResult`: `.model` is the student `SentenceEncoder`, `.transform`
    the checkpoint entry that replays the cut on a freshly loaded teacher, `.report` what was kept.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool):
        raise BadInput(f"layers:N needs an integer N, got {num_layers!r}")
    stack, layers = transformer_layers(teacher)
    return drop_layers(model=teacher, keep=layer_map(teacher_layers=len(layers), student_layers=num_layers), layers=stack)


def make_student(*, teacher: SentenceEncoder, spec: str, example_inputs=None, channel_multiple: int = 1) -> PruneResult:
    """The student a `--student` spec names: `layers:N` (cut to N blocks) or `prune:R` (heads and FFN
    neurons removed by fraction R through edgekd.prune, magnitude importance; needs `example_inputs`)."""
    kind, _, value = str(spec).partition(":")
    if kind == "layers" and value.isdigit():
        return layer_student(teacher=teacher, num_layers=int(value))
    if kind == "prune":
        try:
            ratio = float(value)
        except ValueError:
            raise BadInput(f"student '{spec}': prune:R needs a number R in (0, 1)") from None
        if example_inputs is None:
            raise BadInput(f"student '{spec}': pruning traces the model and needs example_inputs")
        return prune(model=teacher, example_inputs=example_inputs, ratio=ratio, channel_multiple=channel_multiple,
                     prune_heads=True)
    raise BadInput(f"student '{spec}': expected layers:N or prune:R for a Hugging Face teacher")
