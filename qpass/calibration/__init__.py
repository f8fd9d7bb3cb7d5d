"""Calibration (DESIGN §5): the data (dataset.py), the block-by-block runner (sequential.py)
and the activation-statistics collector of DuQuant, SmoothQuant, AWQ and `qpass inspect`
(stats.py; observe.py and gptq.py still collect their own)."""
from .dataset import CalibrationSet
from .sequential import SequentialRunner

__all__ = ["CalibrationSet", "SequentialRunner"]
