"""edgekd: prune, distill, quantize (QAT+KD), export and benchmark PyTorch models for edge targets.

The Python API mirrors the pipeline's stages; every entry point takes keyword arguments and
returns plain objects:

    edgekd.compress(recipe=...)                  the whole pipeline (edgekd.pipeline)
    edgekd.prune(model=..., example_inputs=..., ratio=...)
    edgekd.distill(student=..., teacher=..., data=...)
    edgekd.quantize(model=..., data=..., config=...)
    edgekd.export(model=..., example_inputs=..., out_dir=...)
    edgekd.benchmark(model=..., target=...)
    edgekd.load_target(name_or_path), edgekd.load_data(ref), edgekd.load_model(ref)

Stages are imported on first use, so `import edgekd` (and the CLI) start fast.
"""

from importlib import import_module

from edgekd._version import __version__
from edgekd.registry import register_all

# name -> (module, attribute); a stage package that is itself callable has attribute None.
_API = {
    "compress": ("edgekd.pipeline", "compress"),
    "prune": ("edgekd.prune", None),
    "distill": ("edgekd.distill", None),
    "quantize": ("edgekd.tune", "quantize"),
    "export": ("edgekd.export", None),
    "benchmark": ("edgekd.bench", "benchmark"),
    "load_target": ("edgekd.targets", "load_target"),
    "load_data": ("edgekd.data", "load_data"),
    "load_model": ("edgekd.checkpoint", "load_model"),
}

__all__ = sorted(_API) + ["__version__"]

register_all()  # the composition root: transforms, directory loaders (cheap: nothing heavy is imported)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
    module_name, attribute = _API[name]
    module = import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
