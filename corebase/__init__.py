"""CoreBase: a self-hosted control plane for developer containers."""

from importlib.metadata import PackageNotFoundError, version

from corebase.hookspecs import hookimpl

try:
    __version__ = version("corebase")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__", "hookimpl"]
