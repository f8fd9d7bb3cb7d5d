"""`qpass presets`: the named pipelines (`--pipeline NAME`), one line each: name, bits, passes
and the paper or tool it matches (qpass.presets.ABOUT)."""
from __future__ import annotations

import argparse

from .common import print_rows, scheme_bits

EXAMPLE = """examples:
  qpass presets
  qpass presets | grep gptq
  qpass quantize tiny-llada --pipeline w4a16-gptq --out w4/"""


def add_presets_command(sub) -> None:
    p = sub.add_parser("presets", help="list the named pipelines, one line each",
                       description="The presets `qpass quantize --pipeline NAME` runs: bits "
                                   "(weights/activations, group size), passes, and what each "
                                   "matches. A table on a terminal, plain text otherwise.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from qpass import presets
    rows = []
    for name in presets.names():
        pipe = presets.get(name)
        rows.append((name, scheme_bits(pipe.scheme()), " → ".join(p.name for p in pipe.passes),
                     presets.ABOUT.get(name, "")))
    print_rows(("preset", "bits", "passes", "matches"), rows, "qpass presets (--pipeline NAME)")
    return 0
