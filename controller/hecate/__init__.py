"""Hecate: power protection and staged bootstrap for bare-metal k3s clusters."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hecate")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
