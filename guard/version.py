"""The installed distribution's version, for reports, the served API and webhooks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vector-migration-guard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
