"""Exporters: a qpass compiled checkpoint written in formats other engines read (DESIGN §14,
docs/INTEROP.md). They write qpass's stored integer codes and scales as they are; nothing is
re-rounded, and a scheme a format cannot represent is refused with the reason. The importers
(importing.py) read those formats back into CompiledDenoisers; importing this package registers
them with qpass.runtime.foreign, so load_compiled reads such checkpoints too."""
from qpass.interop.compressed_tensors import export_compressed_tensors
from qpass.interop.gguf import export_gguf
from qpass.interop.gptq import export_gptq
from qpass.interop.importing import load_quantized, register
from qpass.interop.source import ExportSource, read_source

FORMATS = {"compressed-tensors": export_compressed_tensors, "gptq": export_gptq,
           "gguf": export_gguf}

register()

__all__ = ["ExportSource", "FORMATS", "export_compressed_tensors", "export_gguf", "export_gptq",
           "load_quantized", "read_source"]
