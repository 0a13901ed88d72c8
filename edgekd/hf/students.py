"""Students cut from a transformer teacher: `layers:N` keeps N of its blocks (DistilBERT-style),
`layers:N,ffn:F,heads:H` also narrows each kept block (CoFi-style width), `prune:R` narrows every block.

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
from edgekd.student_spec import LayersSpec, PruneSpec, layer_map, parse_student


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


def depth_width_student(*, teacher: SentenceEncoder, layers: int, ffn: float = 1.0, heads: int | None = None,
                        example_inputs, channel_multiple: int = 1) -> PruneResult:
    """`layers:N,ffn:F,heads:H`: the `layer_student` cut, then each kept block's FFN neurons pruned to the
    fraction F (rounded to `channel_multiple`) and its heads to H whole heads, by the magnitude importance
    `prune:R` uses. Width is the axis CoFi, Block Pruning and DynaBERT found cheaper than depth.

    Every block keeps the same FFN width and head count, so the Hugging Face config describes the
    student (`intermediate_size`; heads under `edgekd_pruning`). One transform replays cut and prune;
    `.report` is the prune's (measured against the cut) plus the cut's `layers`.
    """
    teacher_heads = teacher.config.num_attention_heads
    if heads is not None and not 1 <= heads <= teacher_heads:
        raise BadInput(f"heads:{heads}: the teacher has {teacher_heads} heads per layer; a student keeps between 1 "
                       f"and {teacher_heads}")
    cut = layer_student(teacher=teacher, num_layers=layers)
    if ffn == 1 and heads in (None, teacher_heads):
        return cut
    width = prune(model=cut.model, example_inputs=example_inputs, ratio=1 - ffn, channel_multiple=channel_multiple,
                  prune_heads=heads is not None, head_ratio=None if heads is None else 1 - heads / teacher_heads)
    config = {**width.transform["config"], "kept_layers": cut.transform["config"]["kept_layers"]}
    return PruneResult(model=width.model, report={**width.report, "layers": cut.report["layers"]},
                       transform={"name": "prune", "config": config})


def make_student(*, teacher: SentenceEncoder, spec: str, example_inputs=None, channel_multiple: int = 1) -> PruneResult:
    """The student a `--student` spec names (grammar: edgekd.student_spec): `prune:R` (heads and FFN neurons
    removed by fraction R through edgekd.prune, magnitude importance) or `layers:N[,ffn:F][,heads:H]`
    (`depth_width_student`). Pruning traces the model and needs `example_inputs`."""
    made = parse_student(spec)
    if made is None:
        raise BadInput(f"student '{spec}': expected prune:R or layers:N[,ffn:F][,heads:H] for a Hugging Face teacher")
    cut_only = isinstance(made, LayersSpec) and made.ffn == 1 and made.heads is None
    if example_inputs is None and not cut_only:
        raise BadInput(f"student '{spec}': pruning traces the model and needs example_inputs")
    if isinstance(made, PruneSpec):
        return prune(model=teacher, example_inputs=example_inputs, ratio=made.ratio, channel_multiple=channel_multiple,
                     prune_heads=True)
    return depth_width_student(teacher=teacher, layers=made.layers, ffn=made.ffn, heads=made.heads,
                               example_inputs=example_inputs, channel_multiple=channel_multiple)


LADDER_FFN_FRACTIONS = (0.75, 0.5)


def student_ladder(teacher: SentenceEncoder) -> list[str]:
    """Candidates for `edgekd profile`, most parameters first (estimated before rounding): every depth
    below the teacher's, and FFN fractions 0.75 and 0.5 at every depth above half the teacher's, where
    the width steps fall between the depth steps. Profiling exports and times each candidate on every
    target; leaving thin FFNs off the shallow half holds a 6-layer teacher's ladder to 11 candidates."""
    depth = teacher.config.num_hidden_layers
    specs = [LayersSpec(n) for n in range(depth - 1, 0, -1)]
    specs += [LayersSpec(n, f) for n in range(depth, depth // 2, -1) for f in LADDER_FFN_FRACTIONS]
    return [str(s) for s in sorted(specs, key=lambda s: _estimated_params(teacher, s), reverse=True)]


def _estimated_params(teacher: SentenceEncoder, spec: LayersSpec) -> float:
    """Parameters of `spec`'s student before rounding: a block's FFN weights (up-projection with its bias,
    down-projection) scale with F; the rest of the block, and what sits outside the blocks, do not."""
    _, layers = transformer_layers(teacher)
    block = sum(p.numel() for p in layers[0].parameters())
    outside = sum(p.numel() for p in teacher.parameters()) - len(layers) * block
    config = teacher.config
    ffn = config.intermediate_size * (2 * config.hidden_size + 1)
    return outside + spec.layers * (block - ffn * (1 - spec.ffn))
