"""What a prune buys: parameters, multiply-accumulates (MACs) and eager CPU latency.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts at the ATen level, so
functional ops (attention matmuls, `F.conv2d`) count as well as modules, and every count is
attributed to the module that ran it. PyTorch's CPU fused attention kernel has no FLOP formula
in that counter; edgekd adds the standard one so a BERT's attention is not silently free.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

Inputs = torch.Tensor | tuple | dict


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def call_model(model: nn.Module, inputs: Inputs):
    """Run `model` the way the example inputs say: a tensor, positional tuple or keyword dict."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def module_macs(model: nn.Module, inputs: Inputs) -> tuple[int, dict[str, int]]:
    """(total MACs, MACs per module name) of one forward pass on `inputs`."""
    # The counter's module tracker hooks the autograd graph of every tensor a module receives that
    # requires grad, and fails on a view of a parameter made under no_grad (`self.query.expand(b, -1, -1)`
    # fed to an attention pooling layer): while counting, no parameter requires grad.
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for param in trainable:
            param.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            call_model(model, inputs)
    finally:
        for param in trainable:
            param.requires_grad_(True)
    root = type(model).__name__
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name.startswith(root + "."):
            per_module[name[len(root) + 1:]] = sum(ops.values()) // 2
    return counter.get_total_flops() // 2, per_module


def count_params_macs(*, model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    """(parameters, MACs of one forward pass on `example_inputs`) of `model`."""
    params = sum(p.numel() for p in model.parameters())
    return params, module_macs(model, example_inputs)[0]


def latency_p50_ms(model: nn.Module, inputs: Inputs, *, budget_s: float = 0.5, max_runs: int = 50) -> float:
    """Median eager CPU latency of one forward pass, after two warm-up calls, within a time budget."""
    times = []
    with torch.inference_mode():
        for _ in range(2):
            call_model(model, inputs)
        deadline = time.perf_counter() + budget_s
        while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            call_model(model, inputs)
            times.append((time.perf_counter() - start) * 1e3)
    return float(sorted(times)[len(times) // 2])
