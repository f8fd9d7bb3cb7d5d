"""The `qpass` command line: one file per command, common.py for what they share."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
