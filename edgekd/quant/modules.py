"""Fake-quant modules that replace Conv1d/Conv2d/Linear (and a MatMul placeholder) in place.

Each replacement subclasses the layer it replaces and keeps its name and its `weight`/`bias`,
so forward hooks, feature-KD taps and state-dict keys that name the layer keep working. A
batch norm that follows a conv moves inside it (`<conv>.bn`; the old name becomes Identity):
while the BN still learns, the conv uses the batch-statistics folding of Jacob et al. (2018);
once frozen (QAT after warm-up, PTQ, export) it is exactly the folded conv the runtime runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.nn_swap import MatMul  # the placeholder lives with the attention built from it (re-exported here)
from edgekd.quant.observers import BATCH_SAMPLE_SIZE, RangeObserver
from edgekd.quant.ops import fake_quantize, quantize_bias
from edgekd.quant.qparams import MIN_SCALE, Grid, qparams_from_range

ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6}
EMA_MOMENTUM = 0.1


class FakeQuantizer(nn.Module):
    """Quantize-dequantize one tensor on a grid; per-tensor, or per-channel along `axis`.

    States: `enabled` (fake quant on; off until calibrated) and `frozen` (ranges no longer follow
    the data) are plain bools, so torch.export sees no data-dependent branch, mirrored into the
    `flags` buffer so state dicts stay all-tensor and a checkpoint restores them. `observing` is transient:
    "calibrate" collects statistics without quantizing, "ema" (QAT warm-up) moves the range
    towards each training batch's estimate while quantizing.
    """

    def __init__(self, *, grid: Grid, axis: int | None = None, channels: int = 1, observer: str = "minmax",
                 learnable: bool = False):
        super().__init__()
        self.grid = grid
        self.axis = axis
        self.method = observer
        shape = (channels,) if axis is not None else ()
        scale = torch.ones(shape)
        if learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(shape, dtype=grid.torch_dtype))
        self.register_buffer("running_range", torch.zeros(2))
        self.register_buffer("flags", torch.zeros(2, dtype=torch.uint8))  # [enabled, frozen]
        self._enabled = False
        self._frozen = False
        self.observing: str | None = None
        self.observer = RangeObserver(observer, grid)

    @property
    def learnable(self) -> bool:
        return isinstance(self.scale, nn.Parameter)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self.flags[0] = int(value)

    @property
    def frozen(self) -> bool:
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = bool(value)
        self.flags[1] = int(value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Loading copies into the buffers, casting whatever arrives: a float zero point of 1e9 would wrap
        # into a uint8 grid and a complex or integer scale would be cast. Refuse the wrong dtypes first.
        wrong = self.wrong_dtypes(state_dict, prefix)
        if wrong:
            error_msgs.extend(f"{prefix}{problem}" for problem in wrong)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._enabled, self._frozen = (bool(v) for v in self.flags.tolist())
        error_msgs.extend(f"{prefix}{problem}" for problem in self.invalid_parameters())

    def wrong_dtypes(self, state_dict, prefix: str = "") -> list[str]:
        """What in `state_dict` would be coerced on loading: a scale that is not a real floating tensor,
        a zero point whose dtype is not exactly this grid's."""
        problems = []
        scale = state_dict.get(f"{prefix}scale")
        if torch.is_tensor(scale) and not scale.is_floating_point():  # complex and integer tensors are not
            problems.append(f"scale: quantization scales must be a real floating tensor (found {scale.dtype})")
        zero = state_dict.get(f"{prefix}zero_point")
        if torch.is_tensor(zero) and zero.dtype != self.zero_point.dtype:
            problems.append(f"zero_point: must have dtype {self.zero_point.dtype} (found {zero.dtype})")
        return problems

    def invalid_parameters(self) -> list[str]:
        """What makes these quantization parameters unusable: a step that is not a finite positive number
        (a learned LSQ scale counts by magnitude), or a zero point off the integer grid."""
        problems = []
        scale = self.scale.detach()
        step = scale.abs() if self.learnable else scale
        if not bool(torch.isfinite(scale).all()):
            problems.append("scale: quantization scales must be finite (found inf or NaN)")
        elif not bool((step > 0).all()):
            problems.append(f"scale: quantization scales must be > 0 (found {float(step.min()):g})")
        zero = self.zero_point
        if zero.numel() and not bool(((zero >= self.grid.qmin) & (zero <= self.grid.qmax)).all()):
            problems.append(f"zero_point: must lie on the grid [{self.grid.qmin}, {self.grid.qmax}]")
        return problems

    def extra_repr(self) -> str:
        where = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{self.grid.dtype}[{self.grid.qmin},{self.grid.qmax}] {where} enabled={self.enabled}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing == "calibrate":
            self.observer.update(x)
            return x
        if self.observing == "ema" and self.training and not self.frozen:
            self._ema_update(x)
        if not self.enabled:
            return x
        return fake_quantize(x, self.effective_scale(), self.zero_point, self.grid.qmin, self.grid.qmax,
                             self.axis if self.axis is not None else 1)

    def effective_scale(self) -> torch.Tensor:
        # A learned (LSQ) scale may step through zero; keep it a valid positive step size.
        return self.scale.abs().clamp_min(MIN_SCALE) if self.learnable else self.scale

    @torch.no_grad()
    def set_range(self, lo: torch.Tensor | float, hi: torch.Tensor | float) -> None:
        """Point the grid at [lo, hi] (tensors of `channels` entries for per-channel) and enable it."""
        scale, zero = qparams_from_range(torch.as_tensor(lo, dtype=torch.float32),
                                         torch.as_tensor(hi, dtype=torch.float32), self.grid)
        self.scale.data.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero.reshape(self.zero_point.shape))
        if self.axis is None:
            self.running_range.copy_(torch.tensor([float(lo), float(hi)]))
        self.enabled = True

    @torch.no_grad()
    def set_range_from(self, tensor: torch.Tensor) -> None:
        """Min-max range of a tensor (a weight): per channel along `axis`, or over all of it."""
        if self.axis is None:
            self.set_range(tensor.min(), tensor.max())
            return
        per_channel = tensor.detach().movedim(self.axis, 0).reshape(tensor.shape[self.axis], -1)
        self.set_range(per_channel.min(dim=1).values, per_channel.max(dim=1).values)

    def finish_calibration(self) -> bool:
        """Adopt the observer's range; False when it saw no data (the layer never ran)."""
        self.observing = None
        if not self.observer.ready:
            return False
        lo, hi = self.observer.range()
        self.set_range(lo, hi)
        self.observer.reset()
        return True

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor) -> None:
        batch = RangeObserver(self.method, self.grid, sample_size=BATCH_SAMPLE_SIZE)
        batch.update(x)
        lo, hi = batch.range()
        if self.enabled:
            old_lo, old_hi = self.running_range.tolist()
            lo = old_lo + EMA_MOMENTUM * (lo - old_lo)
            hi = old_hi + EMA_MOMENTUM * (hi - old_hi)
        self.set_range(lo, hi)


class _QuantLayer:
    """Shared by the layer replacements: input and weight quantizers, int32 bias grid, output."""

    input_quantizer: FakeQuantizer
    weight_quantizer: FakeQuantizer
    output_quantizer: FakeQuantizer | None

    def _quantized_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        """Put the bias on the int32 grid with scale input_scale * weight_scale, where both are live;
        that is the bias integer kernels (QLinearConv, QGemm) add, so PyTorch and runtime agree."""
        if bias is None or not (self.input_quantizer.enabled and self.weight_quantizer.enabled):
            return bias
        scale = self.input_quantizer.effective_scale().detach() * self.weight_quantizer.effective_scale().detach()
        return quantize_bias(bias, scale)

    def _refresh_weight_range(self, weight: torch.Tensor) -> None:
        """Once calibrated and until frozen, a non-learned weight grid follows the weights as they train."""
        wq = self.weight_quantizer
        if self.training and wq.enabled and not wq.frozen and not wq.learnable:
            wq.set_range_from(weight)


class _QuantConvMixin(_QuantLayer):
    bn: nn.Module | None
    activation: str | None

    def _init_quant(self, *, input_quantizer, weight_quantizer, output_quantizer, bn, activation):
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer
        self.output_quantizer = output_quantizer
        self.bn = bn
        self.activation = activation
        self.register_buffer("bn_frozen_flag", torch.zeros((), dtype=torch.uint8))
        self._bn_frozen = False

    @property
    def bn_frozen(self) -> bool:
        """The folded batch norm stopped learning statistics (kept across train(); saved as a buffer)."""
        return self._bn_frozen

    @bn_frozen.setter
    def bn_frozen(self, value: bool) -> None:
        self._bn_frozen = bool(value)
        self.bn_frozen_flag.fill_(int(value))
        self.train(self.training)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._bn_frozen = bool(self.bn_frozen_flag)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn is not None and self.bn_frozen:
            self.bn.train(False)
        return self

    def extra_repr(self) -> str:
        extra = [super().extra_repr()]
        if self.activation:
            extra.append(f"activation={self.activation}")
        return ", ".join(extra)

    def _channel_shape(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape([-1] + [1] * (self.weight.dim() - 1))

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conv's weight and bias with the batch norm's running statistics folded in."""
        if self.bn is None:
            return self.weight, self.bias
        bn = self.bn
        factor = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            factor = factor * bn.weight
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (bias - bn.running_mean) * factor
        if bn.bias is not None:
            bias = bias + bn.bias
        return self.weight * self._channel_shape(factor), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        if self.bn is not None and self.bn.training:
            y = self._forward_learning_bn(x)
        else:
            weight, bias = self.folded_weight_and_bias()
            self._refresh_weight_range(weight)
            y = self._conv_forward(x, self.weight_quantizer(weight), self._quantized_bias(bias))
        if self.activation is not None:
            y = ACTIVATIONS[self.activation](y)
        return self.output_quantizer(y) if self.output_quantizer is not None else y

    def _forward_learning_bn(self, x: torch.Tensor) -> torch.Tensor:
        """BN still updating: quantize the weight folded with running statistics, undo the fold on
        the output and let the BN normalize with batch statistics (PyTorch's ConvBn QAT scheme)."""
        bn = self.bn
        factor = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            factor = factor * bn.weight
        weight = self.weight * self._channel_shape(factor)
        self._refresh_weight_range(weight)
        y = self._conv_forward(x, self.weight_quantizer(weight), None)
        shape = [1, -1] + [1] * (y.dim() - 2)
        y = y / factor.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return bn(y)


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    pass


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    pass


QUANT_CONV = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}


def quant_conv_from(conv: nn.Conv1d | nn.Conv2d, **quant) -> _QuantConvMixin:
    """A fake-quant copy of `conv` sharing its parameters."""
    cls = QUANT_CONV[type(conv)]
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
              device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight = conv.weight
    new.bias = conv.bias
    new._init_quant(**quant)
    return new.train(conv.training)


class QuantLinear(_QuantLayer, nn.Linear):
    """Linear with quantized input and weight. The output stays float: ONNX Runtime's QGemm and
    MatMulIntegerToFloat and OpenVINO's FullyConnected take int8 in and give float out. `smooth` (a buffer,
    None unless `edgekd.quant.prepare.smooth` set it): per input channel, what the input is multiplied by
    before its quantizer, the weight's columns holding the inverse (SmoothQuant); a Mul in the export."""

    smooth: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x * self.smooth
        x = self.input_quantizer(x)
        self._refresh_weight_range(self.weight)
        return F.linear(x, self.weight_quantizer(self.weight), self._quantized_bias(self.bias))


def quant_linear_from(linear: nn.Linear, *, input_quantizer, weight_quantizer) -> QuantLinear:
    new = QuantLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight = linear.weight
    new.bias = linear.bias
    new.register_buffer("smooth", None)
    new.input_quantizer = input_quantizer
    new.weight_quantizer = weight_quantizer
    new.output_quantizer = None
    return new.train(linear.training)


class QuantMatMul(MatMul):
    """Both operands quantized per tensor: ONNX Runtime runs it as QLinearMatMul /
    MatMulIntegerToFloat, OpenVINO as a u8/i8 MatMul."""

    def __init__(self, *, input_quantizer: FakeQuantizer, other_quantizer: FakeQuantizer):
        super().__init__()
        self.input_quantizer = input_quantizer
        self.other_quantizer = other_quantizer

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.input_quantizer(a), self.other_quantizer(b))


QUANT_LAYER_TYPES = (QuantConv1d, QuantConv2d, QuantLinear, QuantMatMul)


class QuantEmbedding(nn.Embedding):
    """An embedding table stored as INT8 rows, each with its own scale (weight-only: a lookup has no
    arithmetic to run in INT8). The word embeddings are half of all-MiniLM-L6-v2's parameters (11.7M of
    22.6M), so a text "INT8" artifact with a float table is still half float. The export writes the int8
    table and gathers rows before scaling them (edgekd.export.passes.gather_quantized_rows)."""

    weight_quantizer: FakeQuantizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wq = self.weight_quantizer
        if self.training and wq.enabled and not wq.frozen:  # the grid follows the rows as they train
            wq.set_range_from(self.weight)
        return F.embedding(ids, wq(self.weight), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


def quant_embedding_from(embedding: nn.Embedding, *, weight_quantizer: FakeQuantizer) -> QuantEmbedding:
    new = QuantEmbedding(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                         max_norm=embedding.max_norm, norm_type=embedding.norm_type,
                         scale_grad_by_freq=embedding.scale_grad_by_freq, sparse=embedding.sparse,
                         device=embedding.weight.device, dtype=embedding.weight.dtype)
    new.weight = embedding.weight
    new.weight_quantizer = weight_quantizer
    return new.train(embedding.training)


def quantizers(model: nn.Module) -> list[FakeQuantizer]:
    """Every distinct fake quantizer in `model` (shared ones once)."""
    return [m for m in model.modules() if isinstance(m, FakeQuantizer)]
