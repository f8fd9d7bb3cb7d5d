"""Calibration (DESIGN §5): the data (dataset.py), the block-by-block runner (sequential.py)
and the one activation-statistics collector (stats.py: InputStats) that every pass and
`qpass inspect` use; builder.py: the one calibration builder every command uses; coerce.py:
what Pipeline.run accepts as calibration data (texts, token ids, rows, batches)."""
from .builder import build_calibration
from .dataset import CalibrationSet
from .sequential import SequentialRunner
from .stats import InputStats, collect_input_stats

__all__ = ["CalibrationSet", "build_calibration", "SequentialRunner", "InputStats",
           "collect_input_stats"]
