"""README.md's Python snippet (## Usage) runs as written, on the embedded zoo model (issue 26:
it used undefined names and built 32 GB of random weights in its first line)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def usage_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    usage = text[text.index("\n## Usage\n"):]
    match = re.search(r"```python\n(.*?)```", usage, flags=re.S)
    assert match, "README.md's ## Usage has no ```python block"
    return match.group(1)


def test_the_usage_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    code = usage_snippet()
    assert 'load("tiny-llada")' in code                   # small enough to run here
    monkeypatch.chdir(tmp_path)                            # it saves "w4/" where it runs
    exec(compile(code, str(README) + ":## Usage", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "w4" / "manifest.json").is_file()
    printed = capsys.readouterr().out
    assert "blocks," in printed and "EvalResult(" in printed
    # the generation a newcomer sees first is text, not a newline and blanks (issue 26)
    generated = next(ln for ln in printed.splitlines() if ln.startswith("['"))
    letters = sum(c.isalpha() for c in generated)
    assert letters >= 16 and generated.count(" ") < 0.4 * len(generated), generated
