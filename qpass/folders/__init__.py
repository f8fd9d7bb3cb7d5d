"""The one rule for every folder qpass reads (DESIGN §6): a stranger may have made it.

  regular.py   only regular files inside the folder (no symlink out of it, no device, FIFO or
               socket), every metadata read size-capped
  json_read.py every JSON file parsed with depth and type validation against a small schema
  staging.py   copy a folder's files into a private directory (for readers such as
               transformers' tokenizer loader that open whatever they find by path)
  owned.py     the write side: folders qpass creates are its own (created exclusively, never
               through a symlink, locked for the run), outputs never written through a link

Layer 0: imports nothing of qpass but qpass.errors."""
from .json_read import Mapping, Optional, check_shape, parse_json, read_json
from .regular import (CAPS, allowed_roots, check_name, open_regular, read_bytes, read_text,
                      regular_file, sha256_file)
from .staging import stage_files

__all__ = ["CAPS", "Mapping", "Optional", "allowed_roots", "check_name", "check_shape",
           "open_regular", "parse_json", "read_bytes", "read_json", "read_text", "regular_file",
           "sha256_file", "stage_files"]
