"""Errors a user can catch. Every user mistake ends in exactly one of these, with a message
that says what is wrong and what to do about it."""


class QpassError(Exception):
    """Base class of every error qpass raises on purpose."""


class CaptureError(QpassError):
    """The model could not be traced to an FX graph."""


class PipelineError(QpassError):
    """A pipeline's pass order is invalid (checked before any compute)."""


class VerificationError(QpassError):
    """An `exact` pass changed the model's outputs beyond tolerance."""


class CheckpointError(QpassError):
    """A checkpoint directory is missing keys, has wrong shapes, or is corrupt."""


class ConfigError(CheckpointError):
    """A model config (config.json, a checkpoint manifest's config, or a ModelConfig built in
    code) has a field of the wrong type, out of range, inconsistent, or describing a model
    too large to allocate; raised before anything is allocated."""


class CalibrationError(QpassError):
    """Calibration data is empty, too short, mismatched, or produced NaN/Inf."""


class SpecError(QpassError, ValueError):
    """A quantization spec or scheme string is invalid, or does not fit a tensor shape."""


class HadamardError(QpassError, ValueError):
    """No Hadamard matrix of the requested size can be built."""


class BackendError(QpassError):
    """No backend can run an op, or a backend failed to load."""


class OutputPathError(QpassError):
    """An output path (--out, --json, --png) cannot be written, or would overwrite something
    qpass did not write; raised before any compute."""


class UnsafeFileError(CheckpointError):
    """A file in a folder qpass reads breaks the folder rule (DESIGN §6): a symlink that leaves
    the folder, a device, FIFO or socket, a file over its size cap, or JSON too deep or of the
    wrong shape. Raised before the file's content is used."""
