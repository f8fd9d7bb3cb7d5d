"""`make bench`: run every benchmark in bench/ (quick settings) and print one JSON object.

Each bench script prints JSON on its last stdout line; GPU benches say "skipped: no GPU" on
machines without CUDA. Figures are ratios against a baseline measured in the same run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    results, failed = {}, []
    for script in sorted(HERE.glob("*.py")):
        if script.name == Path(__file__).name or script.name.startswith("_"):
            continue
        proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                              text=True, timeout=1800)
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        try:
            results[script.stem] = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            results[script.stem] = {"output": lines[-5:]}
        if proc.returncode != 0:
            failed.append(script.stem)
            results[script.stem] = {"error": proc.stderr.strip().splitlines()[-3:]}
    print(json.dumps({"results": results, "failed": failed}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
