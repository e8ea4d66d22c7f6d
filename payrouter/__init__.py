"""payrouter: an AI model router that autonomous agents pay per call over x402."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("payrouter")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
