"""What every command shares: the one model-loading rule, the one pipeline resolver (preset
name or recipe file) and the device/dtype flags. The calibration builder is
qpass.calibration.build_calibration.

Model-loading rule: MODEL is a compiled checkpoint dir (qpass's manifest.json) → load_compiled;
a zoo name or HF checkpoint dir → qpass.models.load; a large named config (`llada-8b`,
`dream-7b`) has no weights, so it loads on the meta device, which only structural commands
(inspect, planned coverage) accept."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from qpass.errors import PipelineError


def is_structure_only(name: str) -> bool:
    """True for the named configs of real sizes (no weights ship with them)."""
    from qpass.models import NAMED_CONFIGS
    return str(name) in NAMED_CONFIGS and not str(name).startswith("tiny")


def add_trust_arg(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model code a checkpoint ships (LLaDA2, LLaDA-MoE, SDAR: "
                        "auto_map in its config.json); only for checkpoints you trust")


def load_model(name_or_dir, device=None, dtype=None, structure_ok: bool = False,
               trust_remote_code: bool = False):
    """The model MODEL names, by the rule above. `structure_ok`: accept a structure-only
    config (loaded on meta); otherwise such a name is one clear error."""
    from qpass.models import load
    from qpass.models.as_is import AS_IS_CONFIGS
    dt = torch_dtype(dtype)
    if str(name_or_dir) in AS_IS_CONFIGS and not Path(str(name_or_dir)).is_dir():
        if not structure_ok:
            raise PipelineError(f"{name_or_dir!r} is a structure-only config (no weights); pass "
                                f"an HF checkpoint directory of the model instead")
        return load(str(name_or_dir), device="meta")
    if is_structure_only(name_or_dir):
        if not structure_ok:
            raise PipelineError(f"{name_or_dir!r} is a structure-only config (no weights); pass an "
                                f"HF checkpoint directory of the model instead")
        return load(str(name_or_dir), device="meta")
    from qpass.runtime.loading import load_any
    return load_any(name_or_dir, device=device, dtype=dt, trust_remote_code=trust_remote_code)


DTYPES = ("float32", "bfloat16", "float16", "float64")


def torch_dtype(name):
    """The torch dtype of a --dtype value (None stays None)."""
    import torch
    return getattr(torch, name) if isinstance(name, str) else name


def add_device_args(p) -> None:
    """--device / --dtype, shared by quantize and eval."""
    add_device_arg(p)
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="compute dtype of the loaded model (default: float32)")


def add_device_arg(p, extra: str = "") -> None:
    """--device, the same default in every command: auto (cuda when available, else cpu)."""
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda when available, else cpu, said once on stderr), "
                        "cpu, cuda, cuda:1, …" + extra)


def add_progress_args(p, quiet: bool = True) -> None:
    """--quiet (unless the command has its own) and --progress-every: progress is on for every
    command (qpass.display.progress: bars on a terminal, else a line on stderr at each phase's start
    and end and at most one every SECONDS between); main() reads both."""
    from .args import nonneg_float
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    p.add_argument("--progress-every", type=nonneg_float, default=None, metavar="SECONDS",
                   help="when stderr is not a terminal, at most one progress line every SECONDS "
                        "(default 10, or $QPASS_PROGRESS_EVERY)")


def resolve_device(device: str | None) -> str:
    """The torch device --device names; auto (or None): cuda when available, else cpu. Under
    torchrun a plain cuda is this rank's GPU (cuda:LOCAL_RANK)."""
    import torch
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PipelineError(f"--device {device!r} is not a device name; use cpu, cuda or "
                            f"cuda:<index>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    return str(dev)


def device_of(args) -> str:
    """args.device resolved in place (resolve_device), remembering whether auto chose it."""
    args.auto_device = args.device in (None, "auto")
    args.device = resolve_device(args.device)
    return args.device


def say_device(args) -> None:
    """One stderr line naming the device --device auto chose (device_of), said when the work
    starts, so that a mistake found before stays one line: 'device cpu (--device auto: no CUDA
    device here)'. Not with --quiet, and only by rank 0 under torchrun."""
    if not getattr(args, "auto_device", False) or getattr(args, "quiet", False) \
            or os.environ.get("RANK", "0") != "0":
        return
    why = "" if str(args.device).startswith("cuda") else ": no CUDA device here"
    print(f"device {args.device} (--device auto{why})", file=sys.stderr, flush=True)


def resolve_pipeline(name_or_file: str):
    """A preset name, or a recipe: a Python file (the user's own code) that defines
    `pipeline` as a qpass.Pipeline or a list of passes."""
    from qpass import presets
    from qpass.pipeline import Pipeline
    path = Path(name_or_file)
    if path.suffix != ".py":
        return presets.get(name_or_file)
    if not path.is_file():
        raise PipelineError(f"recipe file {path} does not exist")
    import runpy
    try:
        namespace = runpy.run_path(str(path))
    except Exception as e:  # noqa: BLE001 - the user's recipe: name the file and the error
        raise PipelineError(f"recipe {path} failed to run: {type(e).__name__}: {e}") from None
    pipe = namespace.get("pipeline")
    if isinstance(pipe, (list, tuple)):
        pipe = Pipeline(list(pipe))
    if not isinstance(pipe, Pipeline):
        raise PipelineError(f"recipe {path} must define `pipeline` as a qpass.Pipeline or a list "
                            f"of passes (found {type(pipe).__name__})")
    return pipe


def print_rows(headers, rows, title: str = "") -> None:
    """One line per row on stdout: a rich table on a terminal, else plain text in aligned
    columns (the header first), for grep and scripts."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title or None)
        for h in headers:
            table.add_column(h)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for r in (headers, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(r[:-1], widths)) + "  " + str(r[-1]))


def scheme_bits(scheme) -> str:
    """'w4a16 g128' from a scheme's specs (16: kept in float); floating-point grids and K-quants
    name their format ('w4a4 nvfp4', 'w8a8 fp8', 'w4a16 q4_k')."""
    w, a = getattr(scheme, "weight", None), getattr(scheme, "act", None)
    floats = sorted({s.format for s in (w, a) if s is not None and s.format != "int"})
    group = f" g{w.group_size}" if w is not None and w.granularity == "group" and not floats else ""
    return f"w{w.bits if w else 16}a{a.bits if a else 16}{group}" + \
        "".join(f" {f}" for f in floats)
