"""qpass: a compiler-style post-training quantization framework for diffusion LLMs."""
from . import models, ops
from .errors import (BackendError, CalibrationError, CaptureError, CheckpointError, HadamardError,
                     PipelineError, QpassError, SpecError, VerificationError)
from .ir import QGraph, capture

__version__ = "0.1.0"
