"""Integer formats (DESIGN §4, docs/FORMATS.md): the one owner of grids, codes, packed layouts
and the exact integer arithmetic that passes, simulation and backends share."""
from .codes import (MSE_GRID, PERCENTILE, SCALE_FLOOR, QuantizedWeight, compute_qparams, dequantize,
                    fake_quantize, pack, packed_cols, qparams_from_range, quantize, quantize_per_token,
                    to_signed, unpack)
from .attention import KV_BITS, kv_attention, quantize_kv
from .integer import dequant_weight, int_linear, int_matmul, integer_linear, signed_weight, unpack_codes

__all__ = ["MSE_GRID", "PERCENTILE", "SCALE_FLOOR", "QuantizedWeight", "compute_qparams", "dequantize",
           "fake_quantize", "pack", "packed_cols", "qparams_from_range", "quantize",
           "quantize_per_token", "to_signed", "unpack", "dequant_weight", "int_linear", "int_matmul",
           "integer_linear", "signed_weight", "unpack_codes", "KV_BITS", "kv_attention",
           "quantize_kv"]
