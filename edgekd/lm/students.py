"""Students cut from a causal LM teacher, initialised from its weights (grammar: edgekd.student_spec).

    layers:N[,ffn:F][,heads:H]   keep N decoder layers, then in each the fraction F of the MLP neurons
                                 and H query heads (whole grouped-query KV groups)
    prune:R                      every layer keeps (1-R) of its MLP neurons and of its KV groups

Depth: student layer i starts as teacher layer `layer_map(...)[i]` (edgekd.student_spec), evenly spaced
*including both ends*: the first layer is the one adapted to the raw token embeddings, the last writes
the space the (tied) LM head reads. Measured on SmolLM2-135M-Instruct before any training
(cross-entropy on 1.5k tokens of fortunes' `literature`; the teacher: 3.50): at layers:20 both ends
give 9.98, dropping the first 14.13, the last 12.41, and the first 19 layers plus the last 22.44 (even
spacing matters too). At layers:6 every spacing is far off (15-16), so a deep cut leans on
distillation whatever it starts from.

Width: whole neurons and whole KV groups are removed, by weight-magnitude importance, so every
layer keeps the same sizes and the Hugging Face config describes the student exactly: it saves and
reloads as a plain model, and `generate()` with the KV cache works (the cache is indexed by each
attention module's `layer_idx`, renumbered here).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.student_spec import layer_map
from edgekd.lm.model import CausalLM
from edgekd.student_spec import LayersSpec, PruneSpec, parse_student

LADDER_DEPTH_FRACTIONS = (3 / 4, 1 / 2, 1 / 3, 1 / 4)
LADDER_HALF_FFN_DEPTHS = (3 / 4, 1 / 2)


@dataclass
class LMStudent:
    """A student `CausalLM` (the teacher is untouched) and what was kept, for reports."""

    model: CausalLM
    report: dict


def make_lm_student(teacher: CausalLM, spec: str, *, channel_multiple: int = 1) -> LMStudent:
    """The student `spec` names, copied from `teacher`'s weights. MLP neuron counts are rounded to
    `channel_multiple` (a target's preferred channel step; at least one step)."""
    made = parse_student(spec)
    if made is None:
        raise BadInput(f"student '{spec}': expected prune:R or layers:N[,ffn:F][,heads:H] for a causal LM teacher")
    if not isinstance(channel_multiple, int) or isinstance(channel_multiple, bool) or channel_multiple < 1:
        raise BadInput(f"channel_multiple must be a whole number >= 1, got {channel_multiple!r}")
    config = teacher.config
    depth, heads, kv_heads = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    per_group = heads // kv_heads
    neurons = config.intermediate_size
    if isinstance(made, PruneSpec):
        keep_layers = list(range(depth))
        keep_groups = max(1, math.ceil((1 - made.ratio) * kv_heads - 1e-9))
        keep_neurons = _rounded((1 - made.ratio) * neurons, neurons, channel_multiple, up=True)
    else:
        if made.layers > depth:
            raise BadInput(f"student '{spec}': the teacher has {depth} layers; layers:N needs N in 1..{depth}")
        keep_layers = layer_map(teacher_layers=depth, student_layers=made.layers)
        keep_groups = kv_heads if made.heads is None else _groups_for(made.heads, spec, heads, per_group)
        keep_neurons = neurons if made.ffn == 1 else _rounded(made.ffn * neurons, neurons, channel_multiple, up=False)

    hf = _copy_with_layers(teacher.hf, keep_layers)
    for index, layer in enumerate(hf.model.layers):
        layer.self_attn.layer_idx = index
        if keep_groups < kv_heads:
            _narrow_attention(layer.self_attn, keep_groups=keep_groups, per_group=per_group)
        if keep_neurons < neurons:
            _narrow_mlp(layer.mlp, keep_neurons)
    _describe_in_config(hf, teacher_config=config, keep_layers=keep_layers, kv_heads=keep_groups,
                        per_group=per_group, neurons=keep_neurons)
    student = CausalLM(hf.eval(), source=teacher.source, gguf_file=teacher.gguf_file)
    student._tokenizer = teacher._tokenizer
    before, after = _params(teacher), _params(student)
    report = {"spec": str(spec), "layers": keep_layers, "heads": keep_groups * per_group, "kv_heads": keep_groups,
              "intermediate_size": keep_neurons, "params_before": before, "params_after": after,
              "param_fraction": round(after / before, 4)}
    return LMStudent(student, report)


def lm_ladder(teacher: CausalLM) -> list[str]:
    """Candidate specs for a budget search, most parameters first (estimated before rounding): depths
    3/4, 1/2, 1/3 and 1/4 of the teacher's, and half-width MLPs at 3/4 and 1/2 depth, where a width step
    falls between two depth steps. Duplicates (small teachers) are dropped."""
    depth = teacher.config.num_hidden_layers
    specs = {LayersSpec(_depth(depth, f)) for f in LADDER_DEPTH_FRACTIONS}
    specs |= {LayersSpec(_depth(depth, f), 0.5) for f in LADDER_HALF_FFN_DEPTHS}
    specs.discard(LayersSpec(depth))
    ordered = sorted(specs, key=lambda s: (-_estimated_params(teacher, s), str(s)))
    return [str(s) for s in ordered]


def _depth(depth: int, fraction: float) -> int:
    return max(1, int(depth * fraction + 0.5))


def _estimated_params(teacher: CausalLM, spec: LayersSpec) -> float:
    """Parameters of `spec`'s student: a layer's MLP scales with F, the rest of a layer and everything
    outside the layers do not."""
    layers = teacher.hf.model.layers
    layer = _params(layers[0])
    outside = _params(teacher) - len(layers) * layer
    return outside + spec.layers * (layer - _params(layers[0].mlp) * (1 - spec.ffn))


def _groups_for(heads: int, spec: str, teacher_heads: int, per_group: int) -> int:
    """KV groups a `heads:H` student keeps; H must be whole groups so grouped-query attention stays consistent."""
    if heads > teacher_heads or heads % per_group:
        valid = ", ".join(str(per_group * k) for k in range(1, teacher_heads // per_group + 1))
        raise BadInput(f"student '{spec}': the teacher has {teacher_heads} query heads in groups of {per_group} "
                       f"sharing a KV head; heads:H must remove whole groups, so H is one of {valid}")
    return heads // per_group


def _rounded(exact: float, total: int, multiple: int, *, up: bool) -> int:
    """`exact` neurons rounded (up, or to nearest) to `multiple`, at least one multiple, at most `total`."""
    steps = math.ceil(exact / multiple - 1e-9) if up else int(exact / multiple + 0.5)
    return min(total, max(1, steps) * multiple)


def _copy_with_layers(hf: nn.Module, keep: list[int]) -> nn.Module:
    """A deep copy of `hf` whose decoder layer list holds copies of only the `keep` layers: the dropped
    layers are never copied, so a student of a large teacher costs its own size, not the teacher's."""
    layers = hf.model.layers
    memo: dict = {}
    kept = nn.ModuleList(copy.deepcopy(layers[i], memo) for i in keep)
    memo[id(layers)] = kept  # the shared memo also makes every copied module share one copied config
    return copy.deepcopy(hf, memo)


def _describe_in_config(hf: nn.Module, *, teacher_config, keep_layers: list[int], kv_heads: int, per_group: int,
                        neurons: int) -> None:
    """Make the copied config (shared by every copied module) describe the student."""
    config = hf.config
    config.num_hidden_layers = len(keep_layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [teacher_config.layer_types[i] for i in keep_layers]
        if hasattr(hf.model, "has_sliding_layers"):
            hf.model.has_sliding_layers = "sliding_attention" in config.layer_types
    config.head_dim = hf.model.layers[0].self_attn.head_dim  # else derived as hidden / heads, which changed
    config.num_attention_heads = kv_heads * per_group
    config.num_key_value_heads = kv_heads
    config.intermediate_size = neurons


def _narrow_attention(attention: nn.Module, *, keep_groups: int, per_group: int) -> None:
    """Keep the `keep_groups` most important KV heads with their query heads. A group's importance is the
    magnitude of its value path (v_proj rows times o_proj columns): what it can add to the residual stream."""
    head_dim = attention.head_dim
    kv_heads = attention.k_proj.out_features // head_dim
    value = attention.v_proj.weight.detach().view(kv_heads, -1).norm(dim=1)
    output = attention.o_proj.weight.detach().view(-1, kv_heads, per_group * head_dim).norm(dim=(0, 2))
    groups = _top(value * output, keep_groups)
    kv_rows = _rows(groups, head_dim)
    query_heads = (groups[:, None] * per_group + torch.arange(per_group)).reshape(-1)
    query_rows = _rows(query_heads, head_dim)
    attention.q_proj = _sliced(attention.q_proj, rows=query_rows)
    attention.k_proj = _sliced(attention.k_proj, rows=kv_rows)
    attention.v_proj = _sliced(attention.v_proj, rows=kv_rows)
    attention.o_proj = _sliced(attention.o_proj, cols=query_rows)
    attention.num_key_value_groups = per_group


def _narrow_mlp(mlp: nn.Module, keep: int) -> None:
    """Keep the `keep` most important gated-MLP neurons: importance is the product of the norms of the
    neuron's gate and up rows and its down column (how large an output it can write)."""
    score = (mlp.gate_proj.weight.detach().norm(dim=1) * mlp.up_proj.weight.detach().norm(dim=1)
             * mlp.down_proj.weight.detach().norm(dim=0))
    neurons = _top(score, keep)
    mlp.gate_proj = _sliced(mlp.gate_proj, rows=neurons)
    mlp.up_proj = _sliced(mlp.up_proj, rows=neurons)
    mlp.down_proj = _sliced(mlp.down_proj, cols=neurons)
    mlp.intermediate_size = keep


def _top(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in their original order (ties: the earlier index wins)."""
    order = torch.sort(score, descending=True, stable=True).indices
    return order[:keep].sort().values


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _sliced(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the `rows` outputs / `cols` inputs of `linear` (no random init drawn)."""
    weight = linear.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    bias = linear.bias
    new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach() if rows is None else bias.detach()[rows])
    return new


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied embeddings count once
