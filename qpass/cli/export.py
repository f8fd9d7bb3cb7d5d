"""`qpass export DIR --format compressed-tensors|gptq|gguf --out OUT`: a compiled checkpoint
written in a format other engines load (docs/INTEROP.md), from its stored codes (nothing
re-rounded). A model captured as it is (an as-is checkpoint) exports as compressed-tensors
(qpass.interop.as_is_export: transformers' own from_pretrained loads it) and, for LLaDA-MoE,
as GGUF in llama.cpp's llada-moe architecture (qpass.interop.gguf_as_is). `--format gguf
--gguf-type f16|bf16|f32` writes a float model unquantized (DIR: a zoo name, an HF checkpoint
directory, or a compiled checkpoint whose linears are float), the file llama.cpp's own
llama-quantize / llama-imatrix start from."""
from __future__ import annotations

import argparse
from pathlib import Path

from qpass.display.units import fmt_bytes

EXAMPLE = """examples:
  qpass quantize tiny-llada --pipeline w4a16-gptq --out ./w4
  qpass export ./w4 --format gptq --out ./w4-gptq
  qpass export ./w4 --format gptq --scale-dtype float32 --out ./w4-gptq-fp32   # exact scales
  qpass export ./w4 --format compressed-tensors --out ./w4-ct      # vLLM / SGLang / transformers
  qpass quantize tiny-llada --pipeline q4_0-rtn --out ./q4     # int4:g32:sym:signed:f16scale
  qpass export ./q4 --format gguf --out ./tiny-llada-Q4_0.gguf     # llama-diffusion-cli
  qpass export tiny-llada --format gguf --gguf-type f16 --out ./tiny-llada-F16.gguf  # unquantized
  qpass export ./dgemma-w4 --format compressed-tensors --out ./dgemma-w4-ct   # as-is model
  qpass export ./lladamoe-q4 --format gguf --trust-remote-code --out ./lladamoe-Q4_0.gguf"""

# --scale-dtype when not given: what each format's engines read (GPTQ kernels take fp16
# scales) or, where the format stores any float dtype, qpass's own float32 (exact).
DEFAULT_SCALE_DTYPE = {"gptq": "float16", "compressed-tensors": "float32", "gguf": "float16"}


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="write a compiled checkpoint in another engine's format",
                       description="Export the compiled checkpoint DIR to OUT in FORMAT, from "
                                   "its integer codes (no re-rounding); a scheme the format "
                                   "cannot represent is refused with the reason.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR",
                   help="a compiled or as-is checkpoint; with --gguf-type also a zoo name or an "
                        "HF checkpoint directory (a float model)")
    p.add_argument("--format", required=True, choices=tuple(DEFAULT_SCALE_DTYPE))
    p.add_argument("--out", required=True, metavar="OUT",
                   help="a new directory (gguf: a new .gguf file)")
    p.add_argument("--scale-dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="dtype of the scales (gptq: also of the float tensors). Default: "
                        "float16 for gptq (what GPTQ kernels read; scales rounded), float32 "
                        "for compressed-tensors (qpass's scales exactly); gguf: float16 only")
    p.add_argument("--gguf-type", default=None, choices=("f16", "bf16", "f32"),
                   help="--format gguf only: write an unquantized GGUF, every matrix in this "
                        "type (what llama.cpp's llama-quantize and llama-imatrix read)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="DIR is an as-is checkpoint of a model that ships its own code: run "
                        "that code to load it (only for a checkpoint you trust)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from qpass.interop import FORMATS, read_source
    from qpass.runtime import load_compiled
    from qpass.runtime.output import check_new_output
    from qpass.runtime.as_is_model import is_as_is_checkpoint
    from qpass.errors import CheckpointError
    from qpass.runtime.checkpoint import has_format_marker
    check_new_output(args.out, "--out")                  # before anything slow (DESIGN §9)
    scale_dtype = args.scale_dtype or DEFAULT_SCALE_DTYPE[args.format]
    gguf_type = getattr(args, "gguf_type", None)
    if gguf_type and args.format != "gguf":
        raise CheckpointError(f"--gguf-type {gguf_type} is an option of --format gguf, not "
                              f"{args.format}")
    if is_as_is_checkpoint(args.directory):
        if gguf_type:
            raise CheckpointError(f"--gguf-type: {args.directory} is a model captured as it is; "
                                  f"unquantized GGUF export covers the LLaDA, Dream and LLaMA "
                                  f"layouts (a zoo name, an HF directory or a compiled checkpoint)")
        out = _export_as_is(args, scale_dtype)
    elif args.format == "gguf":
        from qpass.interop.gguf import export_gguf, model_source
        src = read_source(load_compiled(args.directory)) \
            if not gguf_type or has_format_marker(args.directory) else model_source(args.directory)
        out = export_gguf(src, args.out, scale_dtype=scale_dtype, gguf_type=gguf_type)
    else:
        src = read_source(load_compiled(args.directory))
        out = FORMATS[args.format](src, args.out, scale_dtype=scale_dtype)
    print(f"wrote {args.format} export to {out} ({fmt_bytes(disk_bytes(out))})")
    return 0


def _export_as_is(args, scale_dtype: str):
    from qpass.errors import CheckpointError
    from qpass.interop.as_is_export import export_as_is_compressed_tensors
    from qpass.interop.gguf_as_is import export_as_is_gguf, supported
    if args.format == "gguf":        # LLaDA-MoE as llama.cpp's llada-moe; others refused there
        return export_as_is_gguf(args.directory, args.out, scale_dtype=scale_dtype,
                                 trust_remote_code=args.trust_remote_code)
    if args.format != "compressed-tensors":
        raise CheckpointError(f"{args.directory} is a model captured as it is (an as-is "
                              f"checkpoint); it exports as --format compressed-tensors only "
                              f"(transformers loads it with the model's own code; "
                              f"{supported()} also as --format gguf), not {args.format}")
    return export_as_is_compressed_tensors(args.directory, args.out, scale_dtype=scale_dtype,
                                           trust_remote_code=args.trust_remote_code)


def disk_bytes(path) -> int:
    """Bytes of the regular files at `path` (a file, or a folder's tree; links not followed)."""
    path = Path(path)
    if not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
