"""qpass: a compiler-style post-training quantization framework for diffusion LLMs."""
from . import calibration, hadamard, models, ops, sampling
from . import eval  # noqa: A004  (qpass.eval, the evaluation package)
from .errors import (BackendError, CalibrationError, CaptureError, CheckpointError, HadamardError,
                     PipelineError, QpassError, SpecError, VerificationError)
from .ir import QGraph, capture
from .passbase import Fact, Pass, PassContext, PassResult
from .specs import QuantSpec, Scheme
from .pipeline import Pipeline
from .compiled import CompiledDenoiser, load_compiled
from . import presets

__version__ = "0.1.0"
