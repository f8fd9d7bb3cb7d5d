"""One size unit (issue 26 part 7: "2.85 MiB" in `qpass quantize` and "2.99 MB" in the demo for
the same bytes): every size qpass prints goes through qpass.display.units.fmt_bytes, which writes the
number and its binary unit together. So no f-string of qpass/, passes/ or backends/ writes a
unit of its own after a computed number: each one found here is a size formatted by hand."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = re.compile(r"^\s*(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\b")
# f-strings that name a unit for a reason other than printing a size
NOT_A_SIZE = {("qpass/sandbox/runner.py", "disk_mb must be a whole number of MiB")}


def hand_formatted_sizes(source: str, path: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        for value, text in zip(parts, parts[1:]):
            if isinstance(value, ast.FormattedValue) and isinstance(text, ast.Constant) \
                    and isinstance(text.value, str) and UNIT.match(text.value):
                literal = "".join(p.value for p in parts if isinstance(p, ast.Constant))
                if not any(path == f and s in literal for f, s in NOT_A_SIZE):
                    found.append(f"{path}:{node.lineno}: …{{}}{text.value[:30]!r}")
    return found


def test_every_printed_size_goes_through_fmt_bytes():
    found = []
    for base in ("qpass", "passes", "backends"):
        for f in sorted((ROOT / base).rglob("*.py")):
            rel = str(f.relative_to(ROOT))
            if rel == "qpass/display/units.py":                   # the one place that may
                continue
            found += hand_formatted_sizes(f.read_text(), rel)
    assert not found, "sizes formatted by hand (use qpass.display.units.fmt_bytes):\n" + "\n".join(found)


def test_the_check_finds_what_main_had():
    old = ('print(f"weights {nb / 2**20:.2f} MiB")\n'
           'x = f"{b / 1e6:.2f} MB ({r:.3f}×)"\n'
           'ok = f"{fmt_bytes(n)} free"\n')
    assert len(hand_formatted_sizes(old, "x.py")) == 2
