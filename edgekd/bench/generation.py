"""Generation benchmark of a causal LM behind the `Decoder` interface: time to first token and decode rate.

The two figures an edge LM is judged by answer different questions: TTFT (prefill of the prompt plus
the first token's argmax) is the wait before anything appears, the decode rate the speed of the
stream after it. Both are timed per prompt and repeat, greedy with EOS ignored, so every run decodes
the same number of tokens. The decoder is passed in (PyTorch, ONNX Runtime, OpenVINO): this layer
never imports `edgekd.lm`.
"""

from __future__ import annotations

import gc
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from edgekd.bench.core import MAX_RUNS
from edgekd.bench.stats import latency_stats
from edgekd.errors import BadInput
from edgekd.host import isa_summary
from edgekd.runtimes.decoding import Decoder

MAX_PROMPT_TOKENS = 32768  # the bounds of a target profile's `generation` block
MAX_NEW_TOKENS = 4096
FEW_TTFT_SAMPLES = 20
"""Below this many prompt x repeat runs, p95 interpolates between the two slowest: close to the maximum."""

@dataclass(frozen=True)
class GenerationFigures:
    prompt_tokens: int  # mean prompt length, rounded (prompts are usually built at one length)
    new_tokens: int
    ttft_ms: dict[str, float]  # p50, p95 over every prompt x repeat
    decode_tokens_per_s: float  # median over the runs of (new_tokens - 1) / time of the steps after the first
    peak_memory_mb: Optional[float]  # what the timed runs added to the resident set at peak; None: not measured
    runs: int
    host: str
    warnings: list[str] = field(default_factory=list)

    @property
    def slo_figures(self) -> dict[str, float]:
        """The figures edgekd.bench.slo.check_slo limits: time to first token (a ceiling), decode rate (a floor)."""
        return {"ttft_ms_p95": self.ttft_ms["p95"], "decode_tokens_per_s_min": self.decode_tokens_per_s}

    def as_dict(self) -> dict:
        """report.json's `generation` entry of a target, followed by the extra detail."""
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "ttft_ms": {"p50": self.ttft_ms["p50"], "p95": self.ttft_ms["p95"]},
                "decode_tokens_per_s": self.decode_tokens_per_s, "peak_memory_mb": self.peak_memory_mb,
                "runs": self.runs, "host": self.host, "warnings": list(self.warnings)}


def bench_generation(decoder: Decoder, prompts: list[list[int]], *, new_tokens: int, repeats: int = 3,
                     warmup: int = 1) -> GenerationFigures:
    """Time `repeats` greedy generations of `new_tokens` after each prompt, after `warmup` untimed passes
    over all prompts (every prompt length, since runtimes may prepare per shape).

    Peak memory is measured in this process: the kernel's resident-set high-water mark is reset before the
    warm-up and read after the timed runs, less the resident set at the reset. That is what generating adds
    to the already loaded model (KV cache, activations, runtime arenas), not the model's weights.
    """
    arrays = _check(decoder, prompts, new_tokens, repeats, warmup)
    baseline_mb = _reset_peak_rss()
    for _ in range(warmup):
        for prompt in arrays:
            _generate(decoder, prompt, new_tokens)
    ttft_ms, rates = [], []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection must not land in a sample
    try:
        for _ in range(repeats):
            for prompt in arrays:
                first_s, rest_s = _generate(decoder, prompt, new_tokens)
                ttft_ms.append(first_s * 1e3)
                rates.append((new_tokens - 1) / rest_s if rest_s > 0 else float("inf"))
    finally:
        if gc_was_enabled:
            gc.enable()
    peak_mb = _proc_status_mb("VmHWM")
    increment = None if baseline_mb is None or peak_mb is None else peak_mb - baseline_mb
    warnings = []
    if len(ttft_ms) < FEW_TTFT_SAMPLES:
        warnings.append(f"only {len(ttft_ms)} timed generations: TTFT p95 is close to the maximum, not a stable "
                        "figure (raise the repeats or the prompts)")
    stats = latency_stats(np.asarray(ttft_ms))
    return GenerationFigures(
        prompt_tokens=int(round(np.mean([a.shape[1] for a in arrays]))), new_tokens=new_tokens,
        ttft_ms={"p50": stats["p50"], "p95": stats["p95"]}, decode_tokens_per_s=float(np.median(rates)),
        peak_memory_mb=increment if increment is None or increment >= 0 else None, runs=len(ttft_ms),
        host=isa_summary(), warnings=warnings)


def _check(decoder: Decoder, prompts, new_tokens, repeats, warmup) -> list[np.ndarray]:
    """The prompts as [1, n] int64 arrays; every count bounded before anything runs."""
    for name, value, low, high in (("new_tokens", new_tokens, 2, MAX_NEW_TOKENS), ("repeats", repeats, 1, MAX_RUNS),
                                   ("warmup", warmup, 0, MAX_RUNS)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            raise BadInput(f"generation benchmark: {name} must be a whole number in [{low}, {high}], got {value!r}")
    prompts = list(prompts)
    if not prompts or len(prompts) * repeats > MAX_RUNS:
        raise BadInput(f"generation benchmark: expected 1 to {MAX_RUNS} prompts x repeats, got {len(prompts)} "
                       f"prompts x {repeats}")
    arrays = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.ndim != 1 or not 1 <= ids.size <= MAX_PROMPT_TOKENS or not np.issubdtype(ids.dtype, np.integer) \
                or ids.min() < 0 or ids.max() >= decoder.vocab_size:
            raise BadInput(f"generation benchmark: prompts[{i}] must be 1 to {MAX_PROMPT_TOKENS} token ids in "
                           f"[0, {decoder.vocab_size}), got {ids.dtype} {list(ids.shape)}")
        arrays.append(ids.astype(np.int64)[None])
    return arrays


def _generate(decoder: Decoder, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """Seconds to the first token, and for the `new_tokens - 1` steps after it."""
    clock = time.perf_counter
    start = clock()
    logits, state = decoder.forward(prompt, decoder.start())
    token = np.argmax(logits[0, -1])
    first = clock()
    for _ in range(new_tokens - 1):
        logits, state = decoder.forward(np.array([[token]], dtype=np.int64), state)
        token = np.argmax(logits[0, -1])
    return first - start, clock() - first


_STATUS = Path("/proc/self/status")


def _proc_status_mb(key: str) -> Optional[float]:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # reported in kB
    return None


def _reset_peak_rss() -> Optional[float]:
    """Reset this process's resident-set high-water mark to its current RSS (Linux >= 4.0: write 5 to
    /proc/self/clear_refs) and return that RSS; None where the mark cannot be reset, since a peak left
    over from loading the model would then hide everything generation adds."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")
