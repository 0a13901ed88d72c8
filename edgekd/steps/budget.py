"""`student: auto`: the student is chosen from latency measured on the targets (edgekd.profile), not guessed.

The profile runs once per run (kept in the run state, so --resume does not re-measure); every
candidate is rounded to the run's channel multiple, so what was measured is what gets trained.
"""

from __future__ import annotations

from edgekd.errors import GateFailed
from edgekd.profile import profile, shared_choice
from edgekd.steps.context import Context

AUTO = "auto"


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
    ctx.console.print(f"      student: auto -> {budget['reason']}")
    return budget["chosen"]
