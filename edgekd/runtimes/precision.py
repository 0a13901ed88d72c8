"""Which precision the runtime really executes, and whether an "INT8" model silently runs FP32.

A quantized graph is only a request: a runtime that lacks a fused integer kernel for a pattern
dequantizes and runs float. The verdict is read from the graph the runtime executes (ONNX
Runtime's optimized graph, OpenVINO's runtime model), never from the file that was handed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from edgekd.runtimes.sessions import ComputeOp


@dataclass(frozen=True)
class PrecisionReport:
    expected: str  # "int8" when the graph is quantized or the target asks for int8, else the target's
    expected_because: tuple[str, ...]
    executed: Optional[str]  # "int8" | "mixed" | "fp32" | "fp16" | "bf16"; None: no compute layers seen
    int8_executed: Optional[bool]
    compute_layers: dict[str, int]  # precision -> number of compute layers running in it

    @property
    def mismatch(self) -> bool:
        """Expected INT8 but not one compute layer runs integer kernels."""
        return self.expected == "int8" and self.int8_executed is False

    def warning(self) -> Optional[str]:
        if self.mismatch:
            return (f"INT8 expected ({'; '.join(self.expected_because)}) but the runtime executes "
                    f"{self.executed.upper()}: no compute layer runs integer kernels")
        if self.expected == "int8" and self.executed == "mixed":
            floats = sum(n for p, n in self.compute_layers.items() if p != "int8")
            return f"only part of the model runs INT8: {floats} of {sum(self.compute_layers.values())} compute " \
                   "layers execute in floating point"
        return None

    def to_dict(self) -> dict:
        return {"expected": self.expected, "expected_because": list(self.expected_because),
                "executed": self.executed, "int8_executed": self.int8_executed, "mismatch": self.mismatch,
                "compute_layers": dict(self.compute_layers)}


def assess_precision(*, ops: list[ComputeOp], graph_quantized: bool, target_precision: str) -> PrecisionReport:
    because = []
    if graph_quantized:
        because.append("the graph holds quantize/dequantize ops")
    if target_precision == "int8":
        because.append("the target's precision is int8")
    expected = "int8" if because else target_precision
    counts = Counter(op.precision for op in ops)
    if not ops:
        executed, int8 = None, None
    elif counts["int8"] == len(ops):
        executed, int8 = "int8", True
    elif counts["int8"]:
        executed, int8 = "mixed", True
    else:
        executed, int8 = counts.most_common(1)[0][0], False
    return PrecisionReport(expected, tuple(because), executed, int8, dict(counts))


def int8_counts(ops: list[ComputeOp]) -> tuple[dict[str, int], dict[str, int]]:
    """(integer-kernel compute ops by op type, all compute ops by op type): the export gate's evidence."""
    int8: dict[str, int] = {}
    total: dict[str, int] = {}
    for op in ops:
        total[op.op] = total.get(op.op, 0) + 1
        if op.precision == "int8":
            int8[op.op] = int8.get(op.op, 0) + 1
    return int8, total
