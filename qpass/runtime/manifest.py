"""The manifest of a compiled checkpoint (DESIGN §6), built in one place for both forms of a
run: the model config, the pipeline (every pass's versioned config, so Pipeline.from_manifest
rebuilds it), the pipeline's scheme, library versions and the report. The checkpoint writer
adds the format marker, the graph, the tensor records and the file hashes."""
from __future__ import annotations

import platform

import torch


def library_versions() -> dict:
    from qpass import __version__
    return {"qpass": __version__, "torch": torch.__version__, "python": platform.python_version()}


def build_manifest(config, pipeline, report, **extra) -> dict:
    """The manifest of a run of `pipeline` on a model of `config`; `extra` adds keys (a
    streamed run: graph, tensors, streamed=True)."""
    scheme = getattr(pipeline, "scheme_given", None)
    return {"config": config.to_dict() if hasattr(config, "to_dict") else config,
            "pipeline": [{"name": p.name, "repr": repr(p), "config": p.config()} for p in pipeline],
            "pipeline_scheme": None if scheme is None else scheme.to_dict(),
            "versions": library_versions(),
            "report": report.to_dict(specs=False), **extra}
