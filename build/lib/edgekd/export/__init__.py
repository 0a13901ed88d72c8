"""Export to ONNX (QDQ INT8 where the model is fake-quantized) and OpenVINO IR, parity-gated.

The interface names `edgekd.export(...)` as a function while `edgekd.export` is this package,
so the package itself is callable: `edgekd.export(model=..., ...)` is `export(model=..., ...)`.
"""

from edgekd._callable import make_package_callable
from edgekd.export.exporter import ExportResult, export

__all__ = ["export", "ExportResult"]

make_package_callable(__name__, export)
