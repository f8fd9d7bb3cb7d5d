"""Exporters: a qpass compiled checkpoint written in formats other engines read (DESIGN §14,
docs/INTEROP.md). They write qpass's stored integer codes and scales as they are; nothing is
re-rounded, and a scheme a format cannot represent is refused with the reason."""
from qpass.interop.compressed_tensors import export_compressed_tensors
from qpass.interop.gguf import export_gguf
from qpass.interop.gptq import export_gptq
from qpass.interop.source import ExportSource, read_source

FORMATS = {"compressed-tensors": export_compressed_tensors, "gptq": export_gptq,
           "gguf": export_gguf}

__all__ = ["ExportSource", "FORMATS", "export_compressed_tensors", "export_gguf", "export_gptq",
           "read_source"]
