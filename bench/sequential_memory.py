"""Peak memory of GPTQ through the sequential runner: a 16-layer vs a 4-layer model of the
same width, each quantized in a fresh subprocess (peak RSS from resource.getrusage).

The runner keeps one block's activations plus the cached block inputs, so depth should only
add the extra weights. Prints JSON with both peaks, the measured resident bytes of the extra
weights (RSS after building the models, 16 minus 4 layers), the parameter bytes of the extra
layers, and ratio = (peak16 − extra_resident) / peak4 (acceptance: ≤ 1.5)."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def _current_rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def child(layers: int, d: int, n: int, seq_len: int) -> None:
    """Build, quantize with GPTQ (w4a16g128) and report RSS figures as JSON."""
    import torch

    import qpass
    from qpass import passes as P
    from qpass.calibration import CalibrationSet
    from qpass.models import ModelConfig, build

    torch.set_num_threads(1)
    cfg = ModelConfig(d_model=d, n_layers=layers, n_heads=d // 64, n_kv_heads=d // 64,
                      mlp_hidden=3 * d, vocab_size=264, mask_token_id=258, eos_token_id=257,
                      max_seq_len=seq_len, family="llada", name=f"bench-{layers}")
    model = build(cfg, seed=0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = CalibrationSet.from_ids(torch.arange(20000) % 250, mask_id=258, n=n,
                                    seq_len=seq_len, seed=0)
    pipe = qpass.Pipeline([P.GPTQ("w4a16g128")], verify=False)
    g = qpass.capture(model)                  # the graph the run works on in place
    after_setup = _current_rss_bytes()
    pipe.apply(g, calib)
    print(json.dumps({"layers": layers, "param_bytes": params, "rss_after_setup": after_setup,
                      "peak_rss": _rss_peak_bytes()}))


def measure(layers: int, d: int, n: int, seq_len: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(layers), "--d", str(d),
                          "--n", str(n), "--seq-len", str(seq_len)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="narrower model, fewer samples")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    if args.quick:
        args.d, args.n, args.seq_len = 256, 16, 128
    if args.child is not None:
        child(args.child, args.d, args.n, args.seq_len)
        return
    small, big = measure(4, args.d, args.n, args.seq_len), measure(16, args.d, args.n, args.seq_len)
    extra_resident = big["rss_after_setup"] - small["rss_after_setup"]
    ratio = (big["peak_rss"] - extra_resident) / small["peak_rss"]
    print(json.dumps({"bench": "sequential_memory", "d_model": args.d, "calib_rows": args.n,
                      "seq_len": args.seq_len, "peak_rss_4": small["peak_rss"],
                      "peak_rss_16": big["peak_rss"],
                      "extra_weight_param_bytes": big["param_bytes"] - small["param_bytes"],
                      "extra_resident_bytes": extra_resident,
                      "raw_ratio_16_over_4": big["peak_rss"] / small["peak_rss"],
                      "ratio_without_extra_weights": ratio, "meets_acceptance": ratio <= 1.5}))


if __name__ == "__main__":
    main()
