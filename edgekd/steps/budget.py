"""`student: auto`: the student is chosen from latency measured on the targets (edgekd.profile), not guessed.

The run's own student (the ablation's) is the least capable of the targets' picks, so it fits every one
of them; a target whose budget fits a larger student gets that one as well, trained the same way
(`TargetPlan.own_students`), and deploys it.

The profile runs once per run (kept in the run state, so --resume does not re-measure); every
candidate is rounded to the run's channel multiple, so what was measured is what gets trained.
"""

from __future__ import annotations

from edgekd.errors import BadInput, GateFailed
from edgekd.profile import SLO_KEYS, profile, shared_choice
from edgekd.steps.context import Context
from edgekd.steps.plan import TargetPlan

AUTO = "auto"


def check_auto(plan: TargetPlan) -> None:
    """Before any work: `student: auto` needs a target measurable here whose SLOs can bind the choice."""
    binding = [t for t in plan.available if any(getattr(t.slo, key) is not None for key in SLO_KEYS)]
    if not binding:
        raise BadInput("student: auto needs a target measurable on this host with a latency, memory or size SLO; "
                       f"of {', '.join(t.name for t in plan.targets)}, none is (see `edgekd targets`)")


def choose_student(ctx: Context) -> str:
    """The ladder spec `student: auto` stands for on this run's targets; exit 1 when none fits."""

    def measure() -> dict:
        result = profile(teacher=ctx.teacher, data=ctx.data, targets=ctx.plan.targets, margin=ctx.recipe.budget_margin,
                         model_name=ctx.recipe.teacher, seed=ctx.recipe.seed, channel_multiple=ctx.plan.channel_multiple)
        chosen, reason = shared_choice(result)
        return {"chosen": chosen, "reason": reason,
                "targets": [{"target": t["name"], "available": t["available"], "chosen": t["chosen"],
                             "reason": t["why"], "budget": t["budget"], "candidates": t["candidates"],
                             "skipped": t["skipped"]} for t in result.as_dict()["targets"]]}

    budget = ctx.run.value("budget", measure)
    if budget["chosen"] is None:
        raise GateFailed(f"student: auto found no student for this budget: {budget['reason']}")
    ctx.plan.own_students = {t["target"]: t["chosen"] for t in budget["targets"]
                             if t["available"] and t["chosen"] not in (None, budget["chosen"])}
    ctx.console.print(f"      student: auto -> {budget['reason']}")
    for name, spec in ctx.plan.own_students.items():
        ctx.console.print(f"      {name} fits a larger student and gets its own: {spec}")
    return budget["chosen"]
