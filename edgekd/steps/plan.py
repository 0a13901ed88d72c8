"""Target planning: which INT8 scheme(s) the run trains for, the channel rounding every target
accepts, and what each target deploys (the QAT student in its scheme, or the KD student in FP16 / FP32;
an INT8 target whose INT8 student measures clearly slower than the FP32 KD student deploys the latter)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgekd.errors import BadInput
from edgekd.report.schema import DEPLOYABLE, FP16_VARIANT, KD_FP32, base_variant, own_variant
from edgekd.targets import QuantScheme, Target, availability


@dataclass
class TargetPlan:
    """Which targets a run serves and what the deployable must look like for them."""

    targets: list[Target]
    available: list[Target]
    int8_groups: list[list[Target]]  # INT8 targets grouped by the scheme their kernels want, first seen first
    channel_multiple: int
    static_shapes: bool
    notes: list[str] = field(default_factory=list)
    fp32_instead: dict[str, str] = field(default_factory=dict)  # INT8 target name -> why it deploys the FP32 KD student
    # INT8 target name -> the rounds that decision rests on ({"int8": ..., "fp32": ...}, RoundTimes.as_dict)
    fp32_instead_timing: dict[str, dict] = field(default_factory=dict)
    # target name -> the larger student `student: auto` picked for it than the run's own (the least capable
    # pick, which fits every target): such a target deploys that student, in its precision
    own_students: dict[str, str] = field(default_factory=dict)

    @property
    def int8_target(self) -> Target | None:
        """The first INT8 target: its scheme is the run-root deployable's (and the teacher PTQ's)."""
        return self.int8_groups[0][0] if self.int8_groups else None

    def int8_variants(self) -> dict[str, list[Target]]:
        """QAT student name -> the INT8 targets it serves: DEPLOYABLE for the first scheme (with no INT8
        target, the default scheme, for the ablation), then one more per other scheme."""
        groups = self.int8_groups or [[]]
        return {DEPLOYABLE if i == 0 else f"{DEPLOYABLE}-{group[0].name}": group for i, group in enumerate(groups)}

    def deploy_fp32(self, target: Target, why: str, timing: dict) -> None:
        """`target` deploys the FP32 KD student after all: its INT8 student measured clearly slower (step 5),
        in the rounds `timing` holds (the ablation's shared ones, or the pair's focused re-timing)."""
        self.fp32_instead[target.name] = why
        self.fp32_instead_timing[target.name] = timing
        self.notes.append(why)

    def deployed_variant(self, target: Target) -> str:
        """What `target` deploys: the QAT student in its scheme, or the KD student in FP16 / FP32 (also where
        step 5 measured the INT8 student clearly slower); of its own student where it has one."""
        if target.precision == "fp16":
            base = FP16_VARIANT
        elif target.precision == "fp32" or target.name in self.fp32_instead:
            base = KD_FP32
        else:
            base = next(name for name, group in self.int8_variants().items() if target in group)
        return self._of_student(base, target)

    def fp32_self(self, target: Target) -> str:
        """The FP32 KD student of the student `target` deploys: what its INT8 one must not be slower than."""
        return self._of_student(KD_FP32, target)

    def _of_student(self, base: str, target: Target) -> str:
        spec = self.own_students.get(target.name)
        return base if spec is None else own_variant(base, spec)

    def own_deployables(self) -> dict[str, set[str]]:
        """Each larger student some targets deploy -> the kinds of variant made of it (its KD student for
        the FP32 fall-back of an INT8 target, and what each of its targets deploys)."""
        kinds: dict[str, set[str]] = {}
        for target in self.targets:
            spec = self.own_students.get(target.name)
            if spec is not None:
                own = kinds.setdefault(spec, set())
                own.add(base_variant(self.deployed_variant(target)))
                own.add(KD_FP32)
        return kinds

    @property
    def primary(self) -> str:
        """The run-root deployable (DIR/model.onnx): what the first target deploys."""
        return self.deployed_variant(self.targets[0])

    @property
    def deployed(self) -> set[str]:
        return {self.deployed_variant(t) for t in self.targets}

    @property
    def may_deploy(self) -> set[str]:
        """What the targets deploy, plus the FP32 KD student any INT8 target falls back to when INT8 loses."""
        return self.deployed | {self.fp32_self(t) for t in self.targets if t.precision == "int8"}

    @property
    def scheme(self) -> QuantScheme:
        return self.int8_target.quantization if self.int8_target else QuantScheme()

    @property
    def scheme_source(self) -> str | None:
        return self.int8_target.name if self.int8_target else None

    @property
    def wants_fp16(self) -> bool:
        return any(t.precision == "fp16" for t in self.targets)

    def describe(self) -> str:
        w, a = self.scheme.weights, self.scheme.activations
        extra = [name for name in self.int8_variants() if name != DEPLOYABLE]
        return (f"{w.dtype} {'sym' if w.symmetric else 'asym'} {'per-channel' if w.per_channel else 'per-tensor'} "
                f"weights, {a.dtype} {'sym' if a.symmetric else 'asym'} activations"
                + (f" (from {self.scheme_source})" if self.scheme_source else "")
                + (f", and {', '.join(extra)} for the other scheme(s)" if extra else ""))


def plan_targets(targets: list[Target]) -> TargetPlan:
    """One QAT student per distinct INT8 scheme among the targets; channel rounding satisfies every target."""
    if not targets:
        raise BadInput("no targets given: name at least one target profile (see `edgekd targets`)")
    by_name: dict[str, Target] = {}
    for t in targets:  # a target named twice is served (and timed) once; two different ones, refused
        if by_name.setdefault(t.name, t) != t:
            raise BadInput(f"two different target profiles are named '{t.name}': rename one (its 'name' key)")
    targets = list(by_name.values())
    available = [t for t in targets if availability(t)[0]]
    groups: list[list[Target]] = []
    for t in (t for t in targets if t.precision == "int8"):
        group = next((g for g in groups if g[0].quantization == t.quantization), None)
        if group is None:
            groups.append([t])
        else:
            group.append(t)
    notes = [f"{g[0].name} wants a different INT8 scheme than {groups[0][0].name}: "
             f"{DEPLOYABLE}-{g[0].name} is QAT-trained for it" for g in groups[1:]]
    multiple = 1
    for t in targets:
        multiple = min(math.lcm(multiple, t.channel_multiple), 64)
    return TargetPlan(targets=targets, available=available, int8_groups=groups, channel_multiple=multiple,
                      static_shapes=any(t.static_shapes for t in targets), notes=notes)
