"""What the executor (qpass/pipeline/executor.py) keeps per stage: the stage's record (each
pass's results and witnessed facts; where it was written when the run streams to disk), the
boundary caches carried to the next stage (the main one and the shadows of passes that read
the earlier stages in another state, Pass.stage_inputs), and the per-stage results of each
pass merged into one record for the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class StageRecord:
    """One completed stage. `results` and `facts` are keyed by the pass's position in the
    pipeline; the rest is set when the stage is written to disk (DiskStore)."""
    index: int
    shard: str = ""
    sha256: str = ""
    cache: str = ""
    cache_sha256: str = ""
    results: dict = field(default_factory=dict)     # pass index -> {"metrics", "notes", ...}
    facts: dict = field(default_factory=dict)       # pass index -> facts witnessed here
    modules: dict = field(default_factory=dict)     # module path -> graph_io module entry
    kinds: dict = field(default_factory=dict)       # tensor name -> checkpoint tensor kind
    nodes: list = field(default_factory=list)       # the stage's nodes after every pass


def load_cache(path: Path):
    """(main boundary cache, {pass index: shadow cache}) as written after a stage."""
    from qpass.calibration.sequential import BoundaryCache

    def cache_of(items):
        c = BoundaryCache()
        for values in items:
            c.append(values)
        return c
    # written by a run, hash-checked; weights_only: a tampered file holding anything but
    # tensors and containers is refused by torch's unpickler (never run); the caller
    # (DiskStore.resume) then starts over
    saved = torch.load(path, weights_only=True)
    return cache_of(saved["main"]), {int(k): cache_of(v) for k, v in saved["shadows"].items()}


def copy_cache(cache):
    from qpass.calibration.sequential import BoundaryCache
    out = BoundaryCache()
    for values in cache:
        out.append(dict(values))
    return out


def merge_results(k: int, p, records: list):
    """One PassRecord for the report from the per-stage results of pass `p` (position `k`)."""
    from qpass.runtime.report import PassRecord
    metrics: dict = {}
    notes, changed, rel, seconds = [], [], None, 0.0
    for r in records:
        res = r.results.get(str(k), {})
        notes += res.get("notes", [])
        changed += res.get("nodes_changed", [])
        seconds += res.get("seconds", 0.0)
        if res.get("verified_rel_change") is not None:
            rel = max(rel or 0.0, res["verified_rel_change"])
        for key, v in res.get("metrics", {}).items():
            _merge_metric(metrics, key, v)
    return PassRecord(p.name, repr(p), seconds, changed, metrics, notes, rel)


def _merge_metric(metrics: dict, k, v) -> None:
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
