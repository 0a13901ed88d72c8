"""edgekd's version, from the installed package metadata (a source tree reads 0.0.0+source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgekd")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
