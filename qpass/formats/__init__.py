"""Integer and floating-point formats (DESIGN §4, docs/FORMATS.md): the one owner of grids,
codes, packed layouts and the exact integer arithmetic that passes, simulation and backends
share (floating.py / minifloat.py: fp8, nvfp4, mxfp4, mxfp8)."""
from .codes import (MSE_GRID, PERCENTILE, SCALE_FLOOR, compute_qparams, dequantize, fake_quantize,
                    qparams_from_range, quantize, quantize_per_token, to_signed)
from .packing import pack, packed_cols, unpack
from .quantized_weight import QuantizedWeight
from .attention import KV_BITS, kv_attention, quantize_kv
from .floating import (FloatScales, effective_scale, float_dequantize, float_fake_quantize,
                       float_qparams, float_quantize, float_scale_shape, stored_layout)
from .integer import dequant_weight, int_linear, int_matmul, integer_linear, signed_weight, unpack_codes

__all__ = ["MSE_GRID", "PERCENTILE", "SCALE_FLOOR", "QuantizedWeight", "compute_qparams", "dequantize",
           "fake_quantize", "pack", "packed_cols", "qparams_from_range", "quantize",
           "quantize_per_token", "to_signed", "unpack", "dequant_weight", "int_linear", "int_matmul",
           "integer_linear", "signed_weight", "unpack_codes", "KV_BITS", "kv_attention",
           "quantize_kv", "FloatScales", "effective_scale", "float_dequantize",
           "float_fake_quantize", "float_qparams", "float_quantize", "float_scale_shape",
           "stored_layout"]
