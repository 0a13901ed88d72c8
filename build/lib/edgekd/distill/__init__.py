"""Knowledge distillation: train a small student to match a teacher.

Losses compose by name from a recipe (`LOSSES`, `register_loss`), features are tapped with
forward hooks by module name, teacher outputs are cached on disk, and one training loop serves
offline, born-again, mutual-learning and teacher-assistant modes, single process or torchrun.
Task metrics are pluggable (`METRICS`, `register_metric`).

The interface names `edgekd.distill(...)` as a function while `edgekd.distill` is this package,
so the package itself is callable: `edgekd.distill(student=..., ...)` is `distill(student=..., ...)`.
"""


from edgekd._callable import make_package_callable
from edgekd.distill.config import DistillConfig, DistillResult, LossTerm, config_from_mapping
from edgekd.distill.losses import LOSSES, DistillLoss, register_loss
from edgekd.distill.metrics import METRICS, TaskMetric, evaluate, register_metric
from edgekd.distill.modes import distill
from edgekd.distill.trainer import TrainingDiverged

__all__ = [
    "distill", "evaluate", "DistillConfig", "DistillResult", "LossTerm", "config_from_mapping", "LOSSES",
    "DistillLoss", "register_loss", "METRICS", "TaskMetric", "register_metric", "TrainingDiverged",
]


make_package_callable(__name__, distill)
