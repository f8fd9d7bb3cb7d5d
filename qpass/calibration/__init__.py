"""Calibration (DESIGN §5): the data (dataset.py), the block-by-block runner (sequential.py)
and the one activation-statistics collector every pass and `qpass inspect` use (stats.py)."""
from .dataset import CalibrationSet
from .sequential import SequentialRunner

__all__ = ["CalibrationSet", "SequentialRunner"]
