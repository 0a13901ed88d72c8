"""`quantize`: one call for the CLI and the compress pipeline (PTQ or QAT+KD, per-target choices)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn

from edgekd.errors import BadInput
from edgekd.quant.choice import LayerChoice
from edgekd.quant.observers import check_observer
from edgekd.quant.prepare import plan_of, quantize_ptq
from edgekd.quant.qat import DEFAULT_CALIBRATION_SAMPLES, calibration_batches, qat, qat_distill_config
from edgekd.quant.qparams import weight_bits_for_target
from edgekd.quant.report import QuantReport
from edgekd.targets import QuantScheme, Target


@dataclass
class QuantConfig:
    """How to quantize. `QuantConfig.for_target(target)` fills scheme and weight bits from a profile."""

    mode: Literal["ptq", "qat"] = "qat"
    scheme: QuantScheme = field(default_factory=QuantScheme)
    observer: str = "minmax"
    lsq: bool = False
    fold_bn: bool = True
    weight_bits: int | None = None  # None: 8, or 7 where this host's u8 x s8 kernels saturate (see qparams)
    weight_bits_reason: str | None = None  # why, when for_target chose the bits
    skip: tuple[str, ...] = ()
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    warmup_epochs: int = 1
    distill: object | None = None  # edgekd.distill.DistillConfig for QAT; None: qat_distill_config()
    latency_aware: bool = True  # edgekd.quantize with a target: keep float what INT8 slows down there
    smooth_alpha: float | None = None  # PTQ: SmoothQuant every Linear first (edgekd.quant.prepare.smooth)

    @classmethod
    def for_target(cls, target: Target, **overrides) -> "QuantConfig":
        bits, why = weight_bits_for_target(target)
        return cls(**{"scheme": target.quantization, "weight_bits": bits, "weight_bits_reason": why, **overrides})

    def validated(self) -> "QuantConfig":
        if self.mode not in ("ptq", "qat"):
            raise BadInput(f"quantization mode must be 'ptq' or 'qat', got {self.mode!r}")
        check_observer(self.observer)
        if self.smooth_alpha is not None and self.mode != "ptq":
            raise BadInput("smooth_alpha applies to PTQ; QAT learns its ranges and weights")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise BadInput(f"calibration_samples must be an integer >= 1, got {self.calibration_samples!r}")
        return replace(self, skip=tuple(self.skip))


@dataclass
class QuantizeResult:
    model: nn.Module  # fake-quant, eval mode; export it with edgekd.export.export
    report: QuantReport
    history: list[dict]  # QAT epochs (empty for PTQ)
    layer_choice: LayerChoice | None

    @property
    def kept_float(self) -> bool:
        """INT8 measured slower than float for every layer kind on the target: the model stays float."""
        return bool(self.layer_choice and (self.layer_choice.whole_model or {}).get("all_float"))


def quantize(*, model: nn.Module, data, config: QuantConfig | None = None, teacher: nn.Module | None = None,
             layer_choice: LayerChoice | None = None, out_dir=None, resume: bool = False,
             progress: bool = True) -> QuantizeResult:
    """PTQ (calibration only) or QAT+KD of `model` on `data` (an edgekd Dataset).

    `layer_choice` (measured on a target by edgekd.tune.choose_layers_for_target; `edgekd.quantize`
    measures it for you) keeps float the layers INT8 makes slower there.
    """
    config = (config or QuantConfig()).validated()
    if not hasattr(data, "x_train"):
        raise BadInput(f"data must be an edgekd Dataset (edgekd.data.load_data), got {type(data).__name__}")
    choice = layer_choice
    skip = config.skip
    if choice is not None:
        skip = tuple(skip) + tuple(n for n in choice.float_layers if n not in skip)
    history: list[dict] = []
    distill_config = config.distill or qat_distill_config()
    if choice is not None and choice.whole_model and choice.whole_model["all_float"]:
        return _kept_float(model, config, choice)
    if config.mode == "ptq":
        batches = calibration_batches(data.x_train, collate=distill_config.collate, samples=config.calibration_samples,
                                      batch_size=distill_config.batch_size, seed=distill_config.seed)
        quantized = quantize_ptq(model=model, scheme=config.scheme, calibration=batches, skip=skip,
                                 fold_bn=config.fold_bn, observer=config.observer, weight_bits=config.weight_bits,
                                 smooth_alpha=config.smooth_alpha)
    else:
        quantized, history = qat(model=model, data=data, scheme=config.scheme, teacher=teacher, config=distill_config,
                                 warmup_epochs=config.warmup_epochs, out_dir=out_dir, resume=resume, skip=skip,
                                 observer=config.observer, lsq=config.lsq, fold_bn=config.fold_bn,
                                 weight_bits=config.weight_bits, calibration_samples=config.calibration_samples,
                                 progress=progress)
    plan = plan_of(quantized)
    if config.weight_bits_reason:
        plan["weight_bits_reason"] = config.weight_bits_reason
    if choice is not None:
        plan["latency"] = choice.as_dict()
        for entry in plan["float"]:
            if entry["name"] in choice.float_layers and entry["name"] not in config.skip:
                entry["reason"] = choice.reason_for(entry["name"])
    return QuantizeResult(model=quantized, report=QuantReport.of(quantized), history=history, layer_choice=choice)


def _kept_float(model: nn.Module, config: QuantConfig, choice: LayerChoice) -> QuantizeResult:
    """INT8 measured slower for the whole model on the target: hand back the float model, saying why."""
    report = QuantReport(scheme=config.scheme.model_dump(), weight_bits=config.weight_bits or 8,
                         weight_bits_reason="not applied: the model stays float", observer=config.observer,
                         lsq=config.lsq, graph="not quantized", quantized=[],
                         float_layers=[{"name": n, "reason": choice.reason_for(n)} for n in choice.float_layers],
                         latency=choice.as_dict())
    return QuantizeResult(model=copy.deepcopy(model).eval(), report=report, history=[], layer_choice=choice)
