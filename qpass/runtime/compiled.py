"""CompiledDenoiser: what `Pipeline.run` returns (DESIGN §6).

An nn.Module around the transformed GraphModule, with the model config, the tokenizer and a
manifest (pipeline, specs per linear, library versions, the report). Quantized linears keep
packed integer weights, so `weight_nbytes()` is the real memory of the model. `save(dir)` /
`qpass.load_compiled(dir)` go through qpass.runtime.checkpoint (safetensors + JSON, never pickle);
plugins that add module classes or graph functions register them here."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from qpass.runtime import checkpoint
from qpass.runtime.graph_io import register_function, register_module_class
from qpass.ir.qlinear import is_quantized_module
from qpass.runtime.manifest import build_manifest
from qpass.runtime.report import Report

__all__ = ["CompiledDenoiser", "load_compiled", "register_module_class", "register_function"]


class CompiledDenoiser(nn.Module):
    """forward(input_ids, attention_mask=None) -> logits, like the FP Denoiser."""

    def __init__(self, gm, config, tokenizer=None, manifest: dict | None = None,
                 report: Report | None = None, path: Path | None = None):
        super().__init__()
        self.gm = gm
        self.config = config
        self.tokenizer = tokenizer
        self.manifest = dict(manifest or {})
        if report is None and self.manifest.get("report") is not None:
            report = Report.from_dict(self.manifest["report"])
            report.attach_specs(self.specs())
        self.report = report
        self.path = path            # the checkpoint directory it was saved to or loaded from
        # a streamed run's result: its tensors stay on the meta device, the checkpoint at
        # `path` holds them (qpass.load_compiled(path) computes with it); set by DiskStore
        self.on_disk_only = False
        self.kernels: list[dict] | None = None     # set by load_compiled (binding rows)

    @classmethod
    def from_run(cls, g, pipeline, report: Report, **manifest_extra) -> "CompiledDenoiser":
        """The result of a run of `pipeline` that left the graph `g` (Pipeline.run)."""
        manifest = build_manifest(g.config, pipeline, report, **manifest_extra)
        return cls(g.gm, g.config, g.tokenizer, manifest, report)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if self.on_disk_only:
            from qpass.errors import PipelineError
            raise PipelineError(f"this model was quantized stage by stage to {self.path} and "
                                f"holds no weights in memory; load it: "
                                f"qpass.load_compiled({str(self.path)!r})")
        return self.gm(input_ids, attention_mask)

    def weight_nbytes(self) -> dict[str, int]:
        """{"linear": bytes of linear weights as stored (packed codes + scales (+ zeros) for
        quantized ones; the float matrix otherwise; the head included), "total": bytes of every
        parameter and buffer (tied tensors once)}."""
        linear = 0
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.gm.get_submodule(node.target)
            if hasattr(m, "weight_nbytes"):
                linear += m.weight_nbytes()
            elif isinstance(m, nn.Linear):
                linear += m.weight.numel() * m.weight.element_size()
        seen, total = set(), 0
        for t in list(self.gm.parameters()) + list(self.gm.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return {"linear": linear, "total": total}

    def specs(self) -> dict[str, dict]:
        """{linear name: {"weight": spec or None, "act": spec or None}}, read from the modules
        themselves (the one place a checkpoint stores a spec)."""
        out = {}
        for n in self.gm.graph.nodes:
            if n.op != "call_module":
                continue
            m = self.gm.get_submodule(n.target)
            if isinstance(m, nn.Linear) or is_quantized_module(m):
                ws, as_ = getattr(m, "weight_spec", None), getattr(m, "act_spec", None)
                out[n.target] = {"weight": None if ws is None else str(ws),
                                 "act": None if as_ is None else str(as_)}
        return out

    def quantized_linears(self) -> list[str]:
        return [n.target for n in self.gm.graph.nodes if n.op == "call_module"
                and is_quantized_module(self.gm.get_submodule(n.target))]

    def bind_kernels(self, device=None, prepare: bool = False) -> list[dict]:
        """Per lowered node, the kernel the registry picks on `device` (default: where the
        model's tensors are) for the model's dtype, and why (qpass.runtime.binding). With
        prepare=True the chosen backends build their private weight layouts now (once)."""
        from qpass.runtime import binding
        ts = [t for t in list(self.gm.parameters()) + list(self.gm.buffers()) if t.is_floating_point()]
        dev = device if device is not None else (ts[0].device if ts else torch.device("cpu"))
        dtype = ts[0].dtype if ts else torch.float32
        head_dim = getattr(self.config, "head_dim", None)
        return binding.bind(self.gm, dev, dtype, head_dim, prepare)

    def save(self, directory) -> Path:
        if self.on_disk_only:
            from qpass.errors import PipelineError
            raise PipelineError(f"this model was quantized stage by stage and is saved at "
                                f"{self.path} already; copy that directory instead")
        self.path = checkpoint.save(self, directory)
        return self.path

    def extra_repr(self) -> str:
        names = [p["name"] for p in self.manifest.get("pipeline", [])]
        return f"pipeline={names}, model={getattr(self.config, 'name', None)}"


def load_compiled(directory, device=None, trust_remote_code: bool = False):
    """Load a directory written by CompiledDenoiser.save (hashes verified, no pickle).

    device: move the model there and bind its lowered nodes to that device's kernels; the
    checkpoint is device-neutral (canonical layouts, "auto" backends), so one saved on a CPU
    runs Triton on CUDA and back. `model.kernels` lists per node the kernel chosen and why;
    kernels that run on a private weight layout (Triton W4A16) get it built here, once.
    A directory holding a model captured as it is loads as an AsIsModel (its own code;
    remote code only with trust_remote_code=True). A quantized checkpoint another tool wrote
    (compressed-tensors, GPTQ, a GGUF file: qpass/runtime/foreign.py) is imported with its
    codes and scales as they are."""
    from qpass.runtime import as_is_model, foreign
    if as_is_model.is_as_is_checkpoint(directory):      # a model captured as it is
        return as_is_model.load(directory, device=device, trust_remote_code=trust_remote_code)
    importer = None if checkpoint.has_format_marker(directory) else foreign.importer_for(directory)
    if importer is not None:
        model = importer.load(Path(directory))
    else:
        model = CompiledDenoiser(*checkpoint.load(directory), path=Path(directory))
    if device is not None:
        model = model.to(device)
    model.kernels = model.bind_kernels(prepare=True)
    return model
