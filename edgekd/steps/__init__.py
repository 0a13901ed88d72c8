"""The steps of `edgekd compress`, each a thin call into one stage's public API.

`pipeline.py` reads as the six steps; this package holds what each needs around its stage call:
target planning (`plan`), the variant names (`names`), the shared context and records (`context`),
making / training / quantizing the students (`train`), exporting (`export`), scoring and timing
on the same held-out data (`measure`), and report.json through its typed schema (`report`).
Whatever differs by kind of model comes from the run's model family (edgekd.families).
"""

from edgekd.steps.budget import AUTO, check_auto
from edgekd.steps.context import Artifact, Context, StageLog, Variant, as_variant, recipe_hash, targets_hash
from edgekd.steps.export import export_variants
from edgekd.steps.measure import benchmark_variants
from edgekd.report.schema import DEPLOYABLE, FP16_VARIANT, KD_FP32, NO_KD, TEACHER_FP32, TEACHER_INT8, VARIANTS
from edgekd.steps.plan import TargetPlan, plan_targets
from edgekd.steps.report import all_slos_met, write_report
from edgekd.steps.train import (make_student, quantize_own_students, quantize_student, quantize_teacher,
                                train_own_students, train_student)

__all__ = [
    "AUTO", "check_auto", "Artifact", "Context", "StageLog", "Variant", "as_variant", "recipe_hash", "targets_hash", "export_variants",
    "benchmark_variants", "DEPLOYABLE", "FP16_VARIANT", "KD_FP32", "NO_KD", "TEACHER_FP32", "TEACHER_INT8",
    "VARIANTS", "TargetPlan", "plan_targets", "all_slos_met", "write_report", "make_student", "quantize_student",
    "quantize_teacher", "train_student", "train_own_students", "quantize_own_students",
]
