"""The `qpass` command line: the parser of every command (one file each in qpass/cli/) and
main(). Every command has --help with an example; user mistakes end in one clear error line
(exit 2), never a traceback."""
from __future__ import annotations

import argparse
import sys

from qpass.display import progress
from qpass.errors import QpassError

from .backends import add_backends_command
from .demo import add_demo_command
from .eval import add_eval_command
from .export import add_export_command
from .generate import add_generate_command
from .inspect import add_inspect_command
from .presets import add_presets_command
from .quantize import add_quantize_command
from .schemes import add_schemes_command
from .study import add_study_command


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qpass", description="Post-training quantization for "
                                 "diffusion language models (LLaDA, Dream).")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (add_inspect_command, add_quantize_command, add_eval_command, add_study_command,
                add_generate_command, add_demo_command, add_export_command, add_backends_command,
                add_presets_command, add_schemes_command):
        add(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        with progress.session(enabled=not getattr(args, "quiet", False),
                              every=getattr(args, "progress_every", None)):
            return int(args.func(args) or 0)
    except (QpassError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"qpass {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qpass {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
