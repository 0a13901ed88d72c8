"""Range observers: which [lo, hi] an activation quantizer should cover.

- minmax: the extremes seen. Exact for bounded data, but one outlier stretches the grid.
- percentile: the 0.01% / 99.99% quantiles of a sample, ignoring rare outliers.
- mse: the clipping range that minimizes the mean squared quantization error on a sample
  (searched over shrinking fractions of the min-max range), trading clipping against rounding.

Percentile and MSE keep a bounded random sample (a fixed-seed reservoir), so calibrating on
many batches costs bounded memory and gives the same answer on every run.
"""

from __future__ import annotations

import torch

from edgekd.errors import BadInput
from edgekd.quant.qparams import Grid, qparams_from_range

OBSERVERS = ("minmax", "percentile", "mse")
SAMPLE_SIZE = 1 << 16
BATCH_SAMPLE_SIZE = 1 << 12  # per-batch estimates during QAT warm-up: cheap, then averaged
PERCENTILE = 99.99
MSE_CANDIDATES = 100
MSE_MIN_FRACTION = 0.05


def check_observer(name: str) -> str:
    if name not in OBSERVERS:
        raise BadInput(f"observer must be one of {', '.join(OBSERVERS)}, got {name!r}")
    return name


class RangeObserver:
    """Accumulates activation statistics over calibration batches, then proposes a range."""

    def __init__(self, method: str, grid: Grid, *, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.method = check_observer(method)
        self.grid = grid
        self.sample_size = sample_size
        self.lo: float | None = None
        self.hi: float | None = None
        self.sample: torch.Tensor | None = None
        self.seen = 0
        self.seed = seed

    def reset(self) -> None:
        self.lo = self.hi = None
        self.sample = None
        self.seen = 0

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().float().reshape(-1)
        if flat.numel() == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if self.method != "minmax":
            self._add_to_sample(flat)

    def _add_to_sample(self, flat: torch.Tensor) -> None:
        """Reservoir-style: keep SAMPLE_SIZE values, each batch contributing in proportion to its size."""
        self.seen += flat.numel()
        # A fresh generator per batch, seeded by position: deterministic, and deep-copyable state.
        gen = torch.Generator().manual_seed(self.seed + self.seen)
        take = min(flat.numel(), self.sample_size)
        picked = flat[torch.randperm(flat.numel(), generator=gen)[:take]]
        if self.sample is None:
            self.sample = picked
            return
        merged = torch.cat([self.sample, picked])
        if merged.numel() > self.sample_size:
            # Keep each element with probability proportional to the share of data it stands for.
            weights = torch.cat([torch.full((self.sample.numel(),), (self.seen - flat.numel()) / self.sample.numel()),
                                 torch.full((take,), flat.numel() / take)])
            keep = torch.multinomial(weights, self.sample_size, replacement=False, generator=gen)
            merged = merged[keep]
        self.sample = merged

    @property
    def ready(self) -> bool:
        return self.lo is not None

    def range(self) -> tuple[float, float]:
        """The proposed [lo, hi]; observers that saw nothing raise, naming nothing (the caller names the layer)."""
        if not self.ready:
            raise RuntimeError("observer saw no data")
        if self.method == "minmax" or self.sample is None:
            return self.lo, self.hi
        if self.method == "percentile":
            return _percentile_range(self.sample, self.lo, self.hi)
        return _mse_range(self.sample, self.lo, self.hi, self.grid)


def _percentile_range(sample: torch.Tensor, lo: float, hi: float) -> tuple[float, float]:
    q = torch.quantile(sample, torch.tensor([1 - PERCENTILE / 100, PERCENTILE / 100]))
    # Never widen past what was seen; a one-sided (e.g. post-ReLU) range keeps its exact zero.
    return max(lo, float(q[0])) if lo < 0 else lo, min(hi, float(q[1])) if hi > 0 else hi


def _mse_range(sample: torch.Tensor, lo: float, hi: float, grid: Grid) -> tuple[float, float]:
    from edgekd.quant.ops import fake_quantize

    best, best_err = (lo, hi), float("inf")
    for fraction in torch.linspace(1.0, MSE_MIN_FRACTION, MSE_CANDIDATES).tolist():
        cand_lo, cand_hi = lo * fraction, hi * fraction
        scale, zero = qparams_from_range(torch.tensor(cand_lo), torch.tensor(cand_hi), grid)
        err = float(((fake_quantize(sample, scale, zero, grid.qmin, grid.qmax, 0) - sample) ** 2).mean())
        if err < best_err:
            best, best_err = (cand_lo, cand_hi), err
    return best
