"""The runtime layer: every ONNX Runtime / OpenVINO session edgekd opens, and what it really executes.

The export gate, predict, the benchmark and the latency-aware quantizer all open models through
`open_session`, and read "INT8 executed" from `assess_precision` over the session's compute ops,
so they cannot disagree about the same artifact.
"""

from edgekd.runtimes.precision import PrecisionReport, assess_precision, int8_counts
from edgekd.runtimes.sessions import (
    ComputeOp,
    LayerTime,
    Session,
    SessionConfig,
    cpu_session,
    open_session,
    openvino_config,
    openvino_core,
    runtime_error_summary,
)

__all__ = ["ComputeOp", "LayerTime", "Session", "SessionConfig", "open_session", "cpu_session", "openvino_config",
           "openvino_core", "runtime_error_summary", "PrecisionReport", "assess_precision", "int8_counts"]
