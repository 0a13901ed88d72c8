"""Export to ONNX (QDQ INT8 where the model is fake-quantized) and OpenVINO IR, parity-gated.

The interface names `edgekd.export(...)` as a function while `edgekd.export` is this package,
so the package itself is callable: `edgekd.export(model=..., ...)` is `export(model=..., ...)`.
"""

import sys
import types

from edgekd.export.exporter import ExportResult, export

__all__ = ["export", "ExportResult"]


class _CallablePackage(types.ModuleType):
    def __call__(self, **kwargs) -> ExportResult:
        return export(**kwargs)


sys.modules[__name__].__class__ = _CallablePackage
