"""Quantization specs and schemes: what to quantize, to how many bits, at which granularity.

`QuantSpec` describes one tensor's integer format (`int4:g128:sym`) or floating-point one
(`fp8:channel`, `nvfp4`, `mxfp4`: float_spec.py); `Scheme` says which spec
applies to the weights, activations and attention of every node, with per-node overrides.
Both validate at construction so a typo fails before any compute, with a message that says
what would have been valid. The arithmetic lives in qpass/formats/.

Symmetric grid (DESIGN §4): "full" (the default) is the convention of GPTQ, llm-compressor and
compressed-tensors, s = 2·absmax/(2^b − 1), codes in [−2^(b−1), 2^(b−1) − 1], all 2^b levels
used; "restricted" (`:restricted`) is s = absmax/(2^(b−1) − 1), one level unused; "signed"
(`:signed`, weights only; the `q4_0` scheme's) is llama.cpp's Q4_0 choice, s = m/−2^(b−1) with m
the group's signed extreme (so s may be negative), ties rounded up. Spec strings saved by qpass
before the grid existed mean the restricted grid (`legacy_grid`).

Scale dtype: scales are stored in float32; `:f16scale` makes every weight scale a float16
number (the exact one rounded to fp16) before the codes are chosen with it, so formats that
store fp16 scales (GGUF Q8_0/Q4_0) carry the weights without changing them.

quant_spec.py holds QuantSpec and its spec strings; float_spec.py the floating-point
formats' rules and text; scheme.py holds Scheme and SCHEMES.
"""
from .float_spec import FLOAT_FORMATS, FloatFormat
from .quant_spec import (FALLBACK_GROUPS, GRANULARITIES, GRIDS, GROUP_FITS, OBSERVERS,
                         SCALE_DTYPES, SCALE_TOKENS, QuantSpec, legacy_grid)
from .scheme import OLD_RECORD_MEANING, RECORDED_FIELDS, SCHEMES, Scheme

__all__ = ["FLOAT_FORMATS", "FloatFormat", "FALLBACK_GROUPS", "GRANULARITIES", "GRIDS",
           "GROUP_FITS", "OBSERVERS", "QuantSpec", "SCALE_DTYPES", "SCALE_TOKENS", "legacy_grid", "OLD_RECORD_MEANING", "RECORDED_FIELDS",
           "SCHEMES", "Scheme"]
