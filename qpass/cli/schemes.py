"""`qpass schemes`: the scheme names (`--scheme NAME`, `Pipeline(..., scheme=NAME)`), one line
each: name, bits, weight and activation specs, and whose format it is (DESIGN §4)."""
from __future__ import annotations

import argparse
import sys

from .common import print_rows, scheme_bits

EXAMPLE = """examples:
  qpass schemes
  qpass quantize tiny-llada --scheme w8a8-fp8:b128 --pipeline w8a8-fp8 --out fp8/
  qpass quantize tiny-llada --scheme w4a16:g64 --out w4/    # a name, then weight spec tokens
  qpass quantize tiny-llada --scheme int4:g32:sym:f16scale --out q4/"""

FORMS = ("NAME[kv<bits>][:tokens]: kv<bits> also quantizes attention K/V (w4a4kv8); tokens "
         "change the weight spec (w4a16:g64, w4a8:g128:asym). Or a weight spec alone: "
         "int<bits>[:g<size>|channel|tensor][:sym|asym][:clip<r>][:minmax|percentile|mse]"
         "[:full|restricted|signed][:f16scale], a floating-point one (fp8:channel, nvfp4, "
         "mxfp4) or a llama.cpp K-quant (q4_k, q6_k).")

# Whose format each scheme is (tests: every name of qpass.specs.SCHEMES has a line).
ABOUT = {
    "w4a16g128": "llm-compressor W4A16, GPTQModel bits=4 group_size=128, AWQ",
    "w4a16": "the common name of w4a16g128",
    "w3a16g128": "3-bit weights; the study's W3A16 (arXiv 2508.14896), GPTQModel bits=3",
    "w2a16g128": "2-bit weights; Quant-dLLM's setting",
    "w8a16": "llm-compressor W8A16 (per-channel int8 weights)",
    "w8a8": "llm-compressor W8A8 int8 (dynamic per-token activations), SmoothQuant",
    "w4a8": "per-channel int4 weights, int8 activations; the study's W4A8, QServe",
    "w4a8g128": "llm-compressor W4A8 (int4 g128 weights, int8 per-token activations)",
    "w4a4": "int4 weights and per-token activations; QuaRot, DuQuant",
    "q4_0": "llama.cpp Q4_0: 32-weight blocks, float16 scales, its grid (signed extreme on "
            "-8) (qpass export --format gguf)",
    "q8_0": "llama.cpp Q8_0: 32-weight blocks, float16 scales, its grid (absmax/127) (qpass "
            "export --format gguf)",
    "q5_0": "llama.cpp Q5_0: Q4_0's rule at 5 bits; what llama.cpp writes for a Q4_K tensor "
            "whose K is not a multiple of 256 (qpass export --format gguf)",
    "q4_k": "llama.cpp Q4_K: 256-weight super-blocks of 8x32, 6-bit scales and mins under "
            "float16 d/dmin (qpass export --format gguf)",
    "q6_k": "llama.cpp Q6_K: 256-weight super-blocks of 16x16, int8 scales under float16 d "
            "(qpass export --format gguf)",
    "q4_k_m": "llama-quantize Q4_K_M: q4_k, q6_k for the attn_v / ffn_down / output tensors "
              "llama.cpp's rule picks (qpass export --format gguf)",
    "w8a16-fp8": "FP8 E4M3 per-channel weights, activations unquantized (vLLM's FP8 "
                 "weight-only path)",
    "w8a8-fp8": "FP8 E4M3 per-channel weights + per-token dynamic activations; llm-compressor "
                "FP8_DYNAMIC, vLLM/SGLang fp8",
    "w4a16-nvfp4": "NVFP4 weights (E2M1, 16-blocks, E4M3 scales, fp32 global); llm-compressor "
                   "NVFP4A16",
    "w4a4-nvfp4": "NVFP4 weights and activations (per-token dynamic global); llm-compressor "
                  "NVFP4, ModelOpt NVFP4",
    "w4a4-nvfp4-static": "NVFP4 weights and activations with one calibrated activation "
                         "global scale per tensor; llm-compressor NVFP4 (exports as it)",
    "w4a16-mxfp4": "OCP MXFP4 weights (E2M1, 32-blocks, E8M0 scales); llm-compressor MXFP4A16",
    "w4a4-mxfp4": "OCP MXFP4 weights and per-token dynamic activations; llm-compressor MXFP4",
    "w8a8-mxfp8": "OCP MXFP8 weights and activations (E4M3, 32-blocks, E8M0 scales)",
}


def add_schemes_command(sub) -> None:
    p = sub.add_parser("schemes", help="list the quantization scheme names, one line each",
                       description="The scheme names --scheme takes: bits, weight and "
                                   "activation specs, whose format each is. A table on a "
                                   "terminal, plain text otherwise. " + FORMS,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_schemes)


def cmd_schemes(args) -> int:
    from qpass.specs import SCHEMES, Scheme
    rows = []
    for name, (weight, act) in SCHEMES.items():
        rows.append((name, scheme_bits(Scheme.parse(name)), weight, act or "float", ABOUT.get(name, "")))
    print_rows(("scheme", "bits", "weights", "activations", "matches"), rows,
               "qpass schemes (--scheme NAME)")
    print(FORMS, file=sys.stderr)
    return 0
