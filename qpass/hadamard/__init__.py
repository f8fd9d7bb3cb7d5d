"""Hadamard matrices and fast orthonormal Hadamard transforms (for QuaRot-style rotations).

Supported sizes are n = 2^k * m for m in CORES (k >= 0); see construct.py for how each core is
built and fast.py for the exact transform / sign conventions.
"""

from qpass.hadamard.construct import CORES, factorize, matrix, sizes, supported
from qpass.hadamard.fast import random_matrix, random_signs, transform

__all__ = [
    "CORES",
    "factorize",
    "matrix",
    "random_matrix",
    "random_signs",
    "sizes",
    "supported",
    "transform",
]
