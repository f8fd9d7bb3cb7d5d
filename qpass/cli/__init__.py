"""The `qpass` command line: one file per command (thin: parse, call public APIs, print);
args.py (argument value types) and common.py (MODEL, --pipeline and --device as every command
reads them) for what they share; main.py assembles the parser."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
