"""What a streaming run (qpass/pipeline/streaming.py) keeps between stages and across a
restart: the boundary caches written after each stage (the main one and the shadows of passes
that read the earlier stages in another state, Pass.stage_inputs), and the per-stage results
of each pass merged into one record for the report."""
from __future__ import annotations

from pathlib import Path

import torch


def load_cache(path: Path):
    """(main boundary cache, {pass index: shadow cache}) as written after a stage."""
    from qpass.calibration.sequential import BoundaryCache

    def cache_of(items):
        c = BoundaryCache()
        for values in items:
            c.append(values)
        return c
    saved = torch.load(path, weights_only=True)     # written by this run, hash-checked
    return cache_of(saved["main"]), {int(k): cache_of(v) for k, v in saved["shadows"].items()}


def copy_cache(cache):
    from qpass.calibration.sequential import BoundaryCache
    out = BoundaryCache()
    for values in cache:
        out.append(dict(values))
    return out


def merge_results(name: str, records: list):
    """One PassRecord for the report from a pass's per-stage results."""
    from qpass.runtime.report import PassRecord
    metrics: dict = {}
    notes, changed, rel = [], [], None
    for r in records:
        res = r.results.get(name, {})
        notes += res.get("notes", [])
        changed += res.get("nodes_changed", [])
        if res.get("verified_rel_change") is not None:
            rel = max(rel or 0.0, res["verified_rel_change"])
        for k, v in res.get("metrics", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                    isinstance(metrics.get(k, 0), (int, float)):
                metrics[k] = metrics.get(k, 0) + v          # counts add up over stages
            elif isinstance(v, dict):                       # per-layer tables merge, counts add
                into = metrics.setdefault(k, {})
                for kk, vv in v.items():
                    both = [x for x in (into.get(kk), vv) if isinstance(x, (int, float))
                            and not isinstance(x, bool)]
                    into[kk] = into[kk] + vv if len(both) == 2 else vv
            elif isinstance(v, list):
                metrics.setdefault(k, []).extend(v)
            else:
                metrics[k] = v
    return PassRecord(name, name, 0.0, changed, metrics, notes, rel)
