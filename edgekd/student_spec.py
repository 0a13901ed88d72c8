"""Student specs: the one parser for the students `--student` / the recipe's `student:` make from the teacher.

    prune:R                      remove the fraction R in (0, 1) of the channels, FFN neurons and heads
    layers:N[,ffn:F][,heads:H]   keep N transformer blocks, then in each the fraction F in (0, 1] of the
                                 FFN neurons (rounded to the target's channel multiple) and H whole heads

`layers:N` comes first, so every caller that only asks "made from the teacher?" can go by the prefix.
Anything else (`auto`, a checkpoint, a module:factory) is not a made student and parses to None.
Checked here without a model; the limits the teacher sets (its depth, its heads) are checked when
the student is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.errors import BadInput

MADE_KINDS = ("prune", "layers")
_LAYERS_GRAMMAR = "layers:N[,ffn:F][,heads:H]"


@dataclass(frozen=True)
class PruneSpec:
    """`prune:R`: the fraction of every prunable group to remove."""

    ratio: float

    def __str__(self) -> str:
        return f"prune:{self.ratio:g}"


@dataclass(frozen=True)
class LayersSpec:
    """`layers:N[,ffn:F][,heads:H]`: depth, FFN width fraction and heads per block (None: the teacher's)."""

    layers: int
    ffn: float = 1.0
    heads: int | None = None

    def __str__(self) -> str:
        axes = [f"layers:{self.layers}"]
        if self.ffn != 1:
            axes.append(f"ffn:{self.ffn:g}")
        if self.heads is not None:
            axes.append(f"heads:{self.heads}")
        return ",".join(axes)


def parse_student(spec: str) -> PruneSpec | LayersSpec | None:
    """The student `spec` makes from the teacher, or None when it names no such student; BadInput if malformed."""
    kind, _, value = str(spec).partition(":")
    if kind not in MADE_KINDS:
        return None
    if kind == "prune":
        ratio = _number(value)
        if not 0 < ratio < 1:
            raise BadInput(f"prune:RATIO needs RATIO in (0, 1), got '{value}'")
        return PruneSpec(ratio)
    axes: dict[str, str] = {}
    for part in str(spec).split(","):
        axis, _, text = part.partition(":")
        if axis not in ("layers", "ffn", "heads"):
            raise BadInput(f"unknown axis '{axis}' in '{spec}'; expected {_LAYERS_GRAMMAR}")
        if axis in axes:
            raise BadInput(f"{axis} is given twice in '{spec}'; expected {_LAYERS_GRAMMAR}")
        axes[axis] = text
    layers = _whole(axes["layers"])
    if layers is None:
        raise BadInput(f"layers:N needs a whole number N >= 1, got '{axes['layers']}'")
    ffn = _number(axes.get("ffn", "1"))
    if not 0 < ffn <= 1:
        raise BadInput(f"ffn:F needs F in (0, 1], got '{axes['ffn']}'")
    heads = _whole(axes["heads"]) if "heads" in axes else None
    if "heads" in axes and heads is None:
        raise BadInput(f"heads:H needs a whole number H >= 1, got '{axes['heads']}'")
    return LayersSpec(layers, ffn, heads)


def _number(text: str) -> float:
    """`text` as a float; NaN (which fails every range check) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _whole(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and int(text) >= 1 else None  # "²".isdigit() too


def layer_map(*, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher block index for each student block: evenly spaced from the first to the last block."""
    if not 1 <= student_layers <= teacher_layers:
        raise BadInput(f"layers:{student_layers}: the teacher has {teacher_layers} layers; "
                       f"a student needs between 1 and {teacher_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(i * step + 0.5) for i in range(student_layers)]
