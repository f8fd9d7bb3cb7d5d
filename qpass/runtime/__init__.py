"""The runtime: what a pipeline emits and what a user loads — the compiled module, its report,
checkpoints on disk (atomic, hashed, never pickled), the on-disk graph format, and the module
classes / online transforms that lowered graphs contain."""
from .compiled import CompiledDenoiser, load_compiled
from .graph_io import register_function, register_module_class
from .report import CoverageRow, LinearRecord, PassRecord, Report

__all__ = ["CompiledDenoiser", "load_compiled", "register_function", "register_module_class",
           "Report", "PassRecord", "LinearRecord", "CoverageRow"]
