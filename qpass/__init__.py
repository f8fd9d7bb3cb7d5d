"""qpass: a compiler-style post-training quantization framework for diffusion LLMs.

This file is the package's face (DESIGN §11): it re-exports the public names and is the only
module allowed to import from every layer."""
from . import calibration, hadamard, models, ops, sampling
from . import eval  # noqa: A004  (qpass.eval, the evaluation package)
from .errors import (BackendError, CalibrationError, CaptureError, CheckpointError, ConfigError,
                     HadamardError, PipelineError, QpassError, SpecError, VerificationError)
from .ir import QGraph, capture
from .pipeline import Fact, Pass, PassContext, PassResult, Pipeline
from .runtime import CompiledDenoiser, load_compiled
from .specs import QuantSpec, Scheme
from . import passes, presets  # passes: every built-in Pass registered (Pipeline.from_manifest)
from . import interop  # its importers registered: load_compiled reads compressed-tensors/GPTQ/GGUF

__version__ = "0.1.0"
