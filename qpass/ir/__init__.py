"""The IR: capture a denoiser to a QGraph (torch.fx) with roles and discovered structure."""
from .capture import QpassTracer, trace
from .graph import QGraph, capture
from .roles import module_role
from .structure import ActPair, BlockInfo, VOPair

__all__ = ["QGraph", "capture", "trace", "QpassTracer", "module_role", "BlockInfo", "ActPair", "VOPair"]
