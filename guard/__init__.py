"""vector-migration-guard: check an embedding-engine switch against the stored vectors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vector-migration-guard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
