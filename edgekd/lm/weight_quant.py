"""Weight-only fake quantization of a causal LM: INT8 per output channel, INT4 group-wise.

A decoder spends its time streaming weights, not multiplying activations, so storing the weights as
integers (and dequantizing them on the fly in the kernel) is what makes it faster on a CPU; activations stay
float. Every `nn.Linear` of the decoder layers is converted, and so is the input embedding: INT8 per row
(per token), which is also per output channel of a tied `lm_head`, so one integer matrix serves both the
gather and the head (the exporter stores it once). On SmolLM2-135M that 49152 x 576 matrix is 113 MB in
FP32, 51% of the 220 MB the model's weights took in INT8 with it left float (65% at INT4, group 64); it
stays INT8 per row at `bits=4` too, since a gather reads whole rows. An untied head can be included
(`include_lm_head=True`); `include_embedding=False` keeps the embedding (and a tied head) float.

Grids, chosen so that ONNX Runtime 1.32 and OpenVINO both run them with integer-compressed weights:
- INT8: symmetric int8 per output channel (scale = max|w| / 127, no zero point): `DequantizeLinear`
  per axis in ONNX, an i8 Constant in OpenVINO.
- INT4: asymmetric uint4 per group of `group_size` input features (scale = (max - min) / 15, a uint4 zero
  point per group: ONNX Runtime's MatMulNBits layout and its own `matmul_nbits_quantizer` min-max), so a
  group whose weights are all positive does not waste half the grid (symmetric int4 does).

Scales are recomputed from the float weights at every forward rather than learned: the state_dict stays
that of the float model (a fake-quant model's weights load into any model converted the same way), PTQ is
round-to-nearest of the weights as they are, and during QAT the grid follows the weights the straight-
through estimator moves. Learned (LSQ-style) scales pay off at 2-3 bits; at 4 bits with groups of <= 128
weights the min-max grid is already close to the MSE-optimal one.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from edgekd.errors import BadInput

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128)  # MatMulNBits takes power-of-two blocks >= 16; 32-128 is what int4 LLM recipes use
INT8_MAX = 127
UINT4_MAX = 15


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside an edgekd `CausalLM` wrapper (or the model itself)."""
    return getattr(model, "hf", model)


class WeightOnlyLinear(nn.Linear):
    """An `nn.Linear` whose forward uses its weight rounded to the integer grid (bits 8: per output channel,
    bits 4: per group along the input dim), with a straight-through gradient to the float weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size: int = 128, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.bits = bits
        self.group_size = group_size if bits == 4 else in_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, group_size: int) -> "WeightOnlyLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits,
                    group_size=group_size, device=linear.weight.device, dtype=linear.weight.dtype)
        layer.weight = linear.weight  # the same Parameters: optimizers and tied references keep working
        layer.bias = linear.bias
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the runtime will compute with it (dequantized codes), with a straight-through gradient."""
        return _straight_through(self.weight, self.bits, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}"


def _straight_through(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """`weight` rounded to the integer grid in the forward, its own gradient in the backward (without gradients,
    exactly the dequantized codes the exported graph computes with: w + (d - w) can be d plus a rounding)."""
    rounded = dequantize(*quantize(weight.detach(), bits, group_size), group_size).to(weight.dtype)
    return weight + (rounded - weight.detach()) if torch.is_grad_enabled() else rounded


class WeightOnlyEmbedding(nn.Embedding):
    """An `nn.Embedding` that looks rows up in its weight rounded to INT8 per row (straight-through gradient):
    the grid of a tied head's output channels, so the two uses of the matrix see the same numbers."""

    bits = 8

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> "WeightOnlyEmbedding":
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                    device=embedding.weight.device, dtype=embedding.weight.dtype)
        layer.weight = embedding.weight  # the same Parameter: a tied lm_head keeps reading it
        return layer

    @property
    def group_size(self) -> int:
        return self.embedding_dim

    def quantized_weight(self) -> torch.Tensor:
        return _straight_through(self.weight, self.bits, self.group_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.quantized_weight(), self.padding_idx)


def quantize(weight: torch.Tensor, bits: int,
             group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest codes of `weight` [out, in]: int8 codes [out, in] with scales [out] (symmetric), or
    uint4 codes (in uint8) [out, in] with scales and zero points [out, in / group_size]."""
    weight = weight.float()
    if bits == 8:
        scale = (weight.abs().amax(dim=1) / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        return codes, scale, None
    groups = weight.reshape(weight.shape[0], -1, group_size)
    low = groups.amin(dim=2).clamp(max=0.0)  # zero stays exactly representable (ORT's min-max does the same)
    high = groups.amax(dim=2).clamp(min=0.0)
    scale = ((high - low) / UINT4_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    zero_point = torch.round(-low / scale).clamp(0, UINT4_MAX)
    codes = torch.round(groups / scale[..., None] + zero_point[..., None]).clamp(0, UINT4_MAX)
    return codes.reshape(weight.shape).to(torch.uint8), scale, zero_point.to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
               group_size: int) -> torch.Tensor:
    """The float weight [out, in] the codes stand for."""
    if zero_point is None:
        return codes.float() * scale[:, None]
    groups = codes.float().reshape(codes.shape[0], -1, group_size)
    return ((groups - zero_point.float()[..., None]) * scale[..., None]).reshape(codes.shape)


@torch.no_grad()
def integer_weights(layer: WeightOnlyLinear | WeightOnlyEmbedding) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor | None]:
    """(codes, scales, zero_points) of `layer`'s weight, as the exporter stores them: int8 codes [out, in] and
    scales [out] for bits 8 (no zero point); uint4 values in uint8 [out, in], scales and zero points
    [out, in / group_size] for bits 4."""
    return quantize(layer.weight.detach(), layer.bits, layer.group_size)


def _tied_head(hf: nn.Module) -> nn.Module | None:
    """The output head where it shares its weight with the input embedding, else None."""
    if not (hasattr(hf, "get_output_embeddings") and hasattr(hf, "get_input_embeddings")):
        return None  # a part of a model (e.g. its layers)
    head, embedding = hf.get_output_embeddings(), hf.get_input_embeddings()
    return head if head is not None and embedding is not None and head.weight is embedding.weight else None


def quantizable_linears(model: nn.Module, *, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """The `nn.Linear`s `quantize_weights` converts, by module name: all but the output head, unless asked
    (a tied head comes with the embedding instead)."""
    hf = unwrap(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if include_lm_head and head is not None and head is _tied_head(hf):
        raise BadInput("include_lm_head: the model's lm_head is tied to its input embedding, which quantizes it "
                       "(INT8 per row, one matrix for both); leave include_lm_head off for tied models")
    return {name: module for name, module in hf.named_modules()
            if isinstance(module, nn.Linear) and not isinstance(module, WeightOnlyLinear)
            and (include_lm_head or module is not head)}


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _quantize_embedding(hf: nn.Module) -> tuple[int, int]:
    """Convert the input embedding (and a tied head, the same matrix per output channel) to INT8 per row in
    place; (bytes in fp32, bytes as stored: int8 codes + an fp32 scale per row), (0, 0) where there is none."""
    if not hasattr(hf, "get_input_embeddings"):
        return 0, 0
    embedding, head = hf.get_input_embeddings(), _tied_head(hf)
    if not isinstance(embedding, nn.Embedding) or isinstance(embedding, WeightOnlyEmbedding):
        return 0, 0
    names = {id(m): name for name, m in hf.named_modules()}
    set_module(hf, names[id(embedding)], WeightOnlyEmbedding.from_embedding(embedding))
    if head is not None:
        set_module(hf, names[id(head)], WeightOnlyLinear.from_linear(head, bits=8, group_size=head.in_features))
    rows, width = embedding.weight.shape
    return rows * width * 4, rows * width + rows * 4


def quantize_weights(model: nn.Module, *, bits: int = 8, group_size: int = 128,
                     include_lm_head: bool = False, include_embedding: bool = True) -> dict:
    """Convert the decoder's `nn.Linear`s to `WeightOnlyLinear` (and the input embedding, with a tied head, to
    INT8 per row) in place (PTQ: round-to-nearest from now on; train afterwards for QAT). `model` may also be a
    part of one (e.g. `hf.model.layers[20:]` at 4 bits, then the whole model at 8: already converted layers
    are left as they are). Returns {layers, bits, group_size, embedding, bytes_before, bytes_after}: the fp32
    size of the converted weights and their size as the exporter stores them (codes + fp32 scales + uint4
    zero points)."""
    if bits not in BITS:
        raise BadInput(f"bits: weight-only quantization supports {BITS[0]} or {BITS[1]} bits, got {bits!r}")
    if bits == 4 and group_size not in GROUP_SIZES:
        raise BadInput(f"group_size: expected one of {GROUP_SIZES} for 4-bit weights, got {group_size!r}")
    hf = unwrap(model)
    linears = quantizable_linears(hf, include_lm_head=include_lm_head)
    if bits == 4:
        for name, linear in linears.items():
            if linear.in_features % group_size:
                fits = [g for g in GROUP_SIZES if linear.in_features % g == 0]
                raise BadInput(f"group_size: {name} has {linear.in_features} input features, not a multiple of "
                               f"{group_size} (group sizes that divide it: {fits or 'none'})")
    before, after = _quantize_embedding(hf) if include_embedding else (0, 0)
    embedding = bool(before)
    for name, linear in linears.items():
        set_module(hf, name, WeightOnlyLinear.from_linear(linear, bits=bits, group_size=group_size))
        out_features, in_features = linear.weight.shape
        groups = out_features * (1 if bits == 8 else in_features // group_size)
        before += linear.weight.numel() * 4
        after += linear.weight.numel() * bits // 8 + groups * 4 + (groups + 1) // 2 * (bits == 4)
    return {"layers": len(linears), "bits": bits, "group_size": group_size if bits == 4 else None,
            "embedding": "int8 per row" if embedding else None, "bytes_before": before, "bytes_after": after}


def weight_only_layers(model: nn.Module) -> dict[str, WeightOnlyLinear | WeightOnlyEmbedding]:
    """The converted layers of `model` (linears and the embedding), by module name (of the Hugging Face model)."""
    return {name: m for name, m in unwrap(model).named_modules()
            if isinstance(m, (WeightOnlyLinear, WeightOnlyEmbedding))}


@contextlib.contextmanager
def dequantized_linears(hf: nn.Module) -> Iterator[list[WeightOnlyLinear | WeightOnlyEmbedding]]:
    """Swap each `WeightOnlyLinear` (and `WeightOnlyEmbedding`) for a plain `nn.Linear` (`nn.Embedding`) over
    its dequantized weight for as long as the context lasts, then put the layers back: the exporter traces one
    float initializer per layer (rewritten to integers afterwards), and the export gate's PyTorch reference
    decodes without re-rounding every weight at every token."""
    layers = weight_only_layers(hf)
    plain, dequantized = {}, {}  # one dequantized Parameter per stored weight: a tied head stays tied
    with torch.no_grad():
        for name, layer in layers.items():
            weight = dequantized.setdefault(id(layer.weight), nn.Parameter(
                dequantize(*integer_weights(layer), layer.group_size)))
            if isinstance(layer, WeightOnlyEmbedding):
                plain[name] = nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx,
                                           _weight=weight)
                continue
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            linear.weight = weight
            if layer.bias is not None:
                linear.bias = nn.Parameter(layer.bias.detach().float().clone())
            plain[name] = linear
    try:
        for name, linear in plain.items():
            set_module(hf, name, linear)
        yield list(layers.values())
    finally:
        for name, layer in layers.items():
            set_module(hf, name, layer)
