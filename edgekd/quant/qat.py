"""QAT + KD: the FP32 model teaches its own fake-quant copy through edgekd.distill.

Recipe: prepare (BN moves into its conv), calibrate on training samples (the PTQ starting point),
then distill with a small learning rate. During `warmup_epochs` the activation ranges follow the
training batches (moving average) and batch norms keep learning their statistics; after that
both freeze, so the last epochs fine-tune the weights against the exact integer model the
runtime will execute. The schedule is a distill callback keyed on the epoch number, so a
resumed run re-applies it identically. The calibrated starting point competes too: if no QAT
epoch beats it on the validation metric distill monitors, it is what qat() returns, so QAT is
never worse on validation than the PTQ model it starts from.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
from torch import nn

from edgekd.errors import BadInput
from edgekd.quant.prepare import activation_quantizers, calibrate, freeze, plan_of, prepare
from edgekd.targets import QuantScheme

DEFAULT_CALIBRATION_SAMPLES = 512


def qat_distill_config(**overrides):
    """QAT defaults: fine-tuning, not training (a low learning rate, no early stop, few epochs);
    KD loss is distill's default, logit KD plus hard labels."""
    from edgekd.distill import DistillConfig

    settings = dict(epochs=4, lr=1e-4, weight_decay=0.0, patience=None, warmup_epochs=0.0)
    settings.update(overrides)
    return DistillConfig(**settings)


class QATSchedule:
    """distill callback: observers and BN learn for `warmup_epochs` epochs, then freeze."""

    def __init__(self, warmup_epochs: int):
        self.warmup_epochs = warmup_epochs

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if epoch < self.warmup_epochs:
            for q in activation_quantizers(model):
                # Learned (LSQ) scales move by gradient; a moving average would fight them.
                q.observing = None if q.learnable else "ema"
        else:
            freeze(model)


def calibration_batches(x: np.ndarray, *, collate, samples: int, batch_size: int, seed: int) -> Iterable[tuple]:
    """A fixed random subset of `x`, collated like distill feeds the model (one positional argument)."""
    from edgekd.distill.inference import default_collate

    collate = collate or default_collate
    order = np.sort(np.random.default_rng(seed).permutation(len(x))[:samples])
    for start in range(0, len(order), batch_size):
        yield (collate(x[order[start:start + batch_size]]),)


def qat(*, model: nn.Module, data, scheme: QuantScheme, teacher: nn.Module | None = None, config=None,
        warmup_epochs: int = 1, out_dir=None, resume: bool = False, skip: Iterable[str] = (), observer: str = "minmax",
        lsq: bool = False, fold_bn: bool = True, weight_bits: int | None = None,
        calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """Quantization-aware training of `model` (FP32) distilled from `teacher` (default: `model`).

    `config` is an edgekd.distill.DistillConfig (default: `qat_distill_config()`). Returns the
    fake-quant model (eval mode, ranges and BN frozen, best validation epoch, or the calibrated start
    when no epoch beats it: then it is the PTQ model, and `QuantReport.kept_calibrated_start` says so)
    and distill's per-epoch history. With `out_dir`, distill keeps resumable state under out_dir/checkpoints.
    """
    from edgekd.distill import METRICS, distill, evaluate

    if not isinstance(warmup_epochs, int) or isinstance(warmup_epochs, bool) or warmup_epochs < 0:
        raise BadInput(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
    if not hasattr(data, "x_train"):
        raise BadInput(f"data must be an edgekd Dataset (edgekd.data.load_data), got {type(data).__name__}")
    config = config or qat_distill_config()
    if warmup_epochs > config.epochs:
        raise BadInput(f"warmup_epochs ({warmup_epochs}) exceeds the QAT epochs ({config.epochs})")
    # A frozen copy: the caller's model (often the teacher itself) must stay trainable and untouched.
    teacher = copy.deepcopy(model if teacher is None else teacher)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student = prepare(model=model, scheme=scheme, skip=skip, fold_bn=fold_bn, observer=observer, lsq=lsq,
                      weight_bits=weight_bits)
    calibrate(model=student, inputs=calibration_batches(data.x_train, collate=config.collate,
                                                        samples=calibration_samples, batch_size=config.batch_size,
                                                        seed=config.seed))
    metric = METRICS[data.task]
    key = metric.primary  # compared only when distill monitors it too (its direction is known)
    start = copy.deepcopy(student)
    start_value = evaluate(start, data.x_val, data.y_val, teacher=teacher, task=data.task,
                           collate=config.collate).get(key)
    result = distill(student=student, data=data, teacher=teacher, config=config, out_dir=out_dir, resume=resume,
                     callbacks=(QATSchedule(warmup_epochs),), progress=progress)
    trained_value = result.metrics.get(key)
    kept_start = (config.monitor in (None, key) and start_value is not None and trained_value is not None
                  and (start_value > trained_value if metric.higher_is_better else start_value < trained_value))
    quantized = start if kept_start else result.model
    plan_of(quantized)["qat"] = {"warmup_epochs": warmup_epochs, "epochs": config.epochs, "lr": config.lr,
                                 "temperature": config.temperature, "alpha": config.alpha, "monitor": key,
                                 "calibrated_start": start_value, "best_epoch": result.best_epoch,
                                 "best_epoch_value": trained_value, "kept_calibrated_start": kept_start}
    freeze(quantized)
    return quantized.eval(), result.history
