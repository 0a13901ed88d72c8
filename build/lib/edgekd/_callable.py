"""Stage packages that are also functions: `edgekd.distill(...)` runs distillation while
`edgekd.distill.LOSSES` stays reachable, as the interface contract names both."""

from __future__ import annotations

import sys
import types
from typing import Callable


def make_package_callable(module_name: str, function: Callable) -> None:
    """Calling the package `module_name` calls `function` with the same keyword arguments."""
    package_type = type("CallablePackage", (types.ModuleType,), {
        "__call__": staticmethod(lambda **kwargs: function(**kwargs)),
        "__doc__": function.__doc__,
    })
    sys.modules[module_name].__class__ = package_type
