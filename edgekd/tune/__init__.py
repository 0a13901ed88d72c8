"""Choices made from latency measured on the target's runtime, above the stages they steer.

`choose_layers_for_target` exports and times the model in context (edgekd.export, edgekd.bench),
so it sits above both, and hands the quantization stage a plain `LayerChoice`. `quantize` is the
public `edgekd.quantize`: the stage's PTQ / QAT+KD with that measurement made first.
"""

from __future__ import annotations

from torch import nn

from edgekd.errors import BadInput
from edgekd.quant import LayerChoice, QuantConfig, QuantizeResult
from edgekd.quant import quantize as quantize_stage
from edgekd.targets import Target
from edgekd.tune.layers import choose_layers_for_target

__all__ = ["choose_layers_for_target", "quantize", "LayerChoice"]


def quantize(*, model: nn.Module, data, config: QuantConfig | None = None, teacher: nn.Module | None = None,
             target: Target | None = None, example_inputs=None, layer_choice: LayerChoice | None = None,
             out_dir=None, resume: bool = False, progress: bool = True) -> QuantizeResult:
    """PTQ (calibration only) or QAT+KD of `model` on `data` (an edgekd Dataset).

    With `target` (and `example_inputs`, one input batch) and `config.latency_aware`, layers that
    INT8 makes slower on the target's runtime stay float (choose_layers_for_target); pass
    `layer_choice` to reuse one already measured (e.g. for PTQ and QAT of the same model).
    """
    config = config or (QuantConfig.for_target(target) if target is not None else QuantConfig())
    if layer_choice is None and target is not None and config.latency_aware:
        if example_inputs is None:
            raise BadInput("latency-aware quantization needs example_inputs (one input batch) to time the layers")
        layer_choice = choose_layers_for_target(model=model, target=target, example_inputs=example_inputs,
                                                skip=config.skip)
    return quantize_stage(model=model, data=data, config=config, teacher=teacher, layer_choice=layer_choice,
                          out_dir=out_dir, resume=resume, progress=progress)
