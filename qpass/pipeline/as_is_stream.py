"""Streaming a model captured as it is from its checkpoint directory (DESIGN §12): the
model is built with its parameters on the meta device (buffers real), and each repeated
layer's weights are read from the safetensors files when the model's own forward calls the
layer and dropped when it returns, so the float model is never in memory as a whole.

Modules outside the layers (embeddings, final norm, head, self-conditioning) stay loaded.
Once a stage is quantized its linears are QuantLinear modules (packed, kept), its expert
slices are kept as codes and dequantized only while the layer runs, and its remaining float
tensors (norms, routers) stay loaded. Results equal the in-memory run's: the same
forwards on the same weights, only the residency differs (tests/models/test_as_is_stream.py).
The price is reading every not-yet-quantized layer once per stage (as_is_run.py)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn

from qpass.errors import CheckpointError
from qpass.ir.model_structure import stacks


class WeightStreamer:
    def __init__(self, model: nn.Module, directory, dtype=None):
        from qpass.models.loading import checkpoint_tensors
        self.model, self.dir = model, Path(directory)
        self.files = checkpoint_tensors(self.dir)
        self.owners: dict[str, list[tuple[nn.Module, str]]] = {}
        self.key_of: dict[str, str] = {}          # every parameter path → its key
        first: dict[int, str] = {}
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is None:
                    continue
                full = f"{mod_name}.{pname}" if mod_name else pname
                key = first.setdefault(id(p), full)
                self.owners.setdefault(key, []).append((mod, pname))
                if full in self.files and key not in self.files:   # the name the file uses
                    self.owners[full] = self.owners.pop(key)
                    first[id(p)] = full
        paths: dict[int, list[str]] = {}
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is not None:
                    paths.setdefault(id(p), []).append(f"{mod_name}.{pname}" if mod_name
                                                       else pname)
        for pid, key in first.items():
            for path in paths[pid]:
                self.key_of[path] = key
        missing = [k for k in self.owners if k not in self.files]
        if missing:
            raise CheckpointError(f"{self.dir} lacks tensors the model's config needs: "
                                  f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        self.dtype = dtype
        self.layers = [p for s in stacks(model) for p in s]
        self.pinned: set[str] = set()
        self.gone: set[str] = set()              # weights of linears replaced by QuantLinear
        self.coded: dict[str, list] = {}          # param key → [QuantizedWeight per expert]
        self.handles: list = []
        self.reads = 0

    # ---- residency ------------------------------------------------------------------------
    def _keys_under(self, prefix: str) -> list[str]:
        return list(dict.fromkeys(k for path, k in self.key_of.items()
                                  if path.startswith(prefix + ".")))

    def _set(self, key: str, tensor: torch.Tensor) -> None:
        mod, name = self.owners[key][0]
        old = mod._parameters[name]
        new = nn.Parameter(tensor, requires_grad=old.requires_grad)
        for m, n in self.owners[key]:
            m._parameters[n] = new

    def _read(self, key: str) -> torch.Tensor:
        from safetensors import safe_open
        mod, name = self.owners[key][0]
        want = mod._parameters[name]
        if key in self.coded:
            t = torch.stack([q.dequantize(want.dtype) for q in self.coded[key]])
        else:
            with safe_open(str(self.files[key]), framework="pt") as fh:
                t = fh.get_tensor(key)
            self.reads += 1
            if tuple(t.shape) != tuple(want.shape):
                raise CheckpointError(f"shape mismatch for '{key}': checkpoint has "
                                      f"{tuple(t.shape)}, the config expects {tuple(want.shape)}")
            if not torch.isfinite(t).all():
                raise CheckpointError(f"'{key}' holds NaN or Inf values; the checkpoint is "
                                      f"damaged (re-download it)")
        return t.to(want.dtype)

    def load(self, keys) -> None:
        for k in keys:
            mod, name = self.owners[k][0]
            if mod._parameters[name].is_meta:
                self._set(k, self._read(k))

    def drop(self, keys) -> None:
        for k in keys:
            if k in self.pinned:
                continue
            mod, name = self.owners[k][0]
            p = mod._parameters[name]
            if not p.is_meta:
                self._set(k, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    def pin_stage(self, layer_paths: list[str], coded: dict, replaced: list[str]) -> None:
        """After a stage is quantized: the linears at `replaced` are QuantLinear modules now
        (their float weights are never read again), its expert params come from `coded`
        (parameter path → codes per expert), every other float tensor of its layers stays
        loaded."""
        for path in replaced:
            for field in ("weight", "bias"):
                key = self.key_of.get(f"{path}.{field}")
                if key is not None:
                    self.gone.add(key)
        for lp in self.layer_keys:
            self.layer_keys[lp] = [k for k in self.layer_keys[lp] if k not in self.gone]
        for path, qws in coded.items():
            key = self.key_of[path]
            self.coded[key] = qws
            self.drop([key])
        for lp in layer_paths:
            for k in self.layer_keys[lp]:
                if k not in self.coded:
                    self.load([k])
                    self.pinned.add(k)

    # ---- hooks ----------------------------------------------------------------------------
    def start(self) -> "WeightStreamer":
        from safetensors import safe_open
        for name, buf in self.model.named_buffers():   # persistent buffers: the file's values
            if name in self.files:
                with safe_open(str(self.files[name]), framework="pt") as fh:
                    t = fh.get_tensor(name)
                if tuple(t.shape) != tuple(buf.shape):
                    raise CheckpointError(f"shape mismatch for buffer '{name}': checkpoint has "
                                          f"{tuple(t.shape)}, the config expects "
                                          f"{tuple(buf.shape)}")
                buf.copy_(t.to(buf.dtype))
        inside = {k for lp in self.layers for k in self._keys_under(lp)}
        outside = [k for k in self.owners if k not in inside]
        self.load(outside)
        self.pinned.update(outside)
        self.layer_keys = {lp: self._keys_under(lp) for lp in self.layers}
        for lp in self.layers:
            mod = self.model.get_submodule(lp)
            self.handles.append(mod.register_forward_pre_hook(
                lambda m, a, lp=lp: self.load(self.layer_keys[lp])))
            self.handles.append(mod.register_forward_hook(
                lambda m, a, o, lp=lp: self.drop(self.layer_keys[lp]), always_call=True))
        return self

    @contextlib.contextmanager
    def loaded(self, layer_paths: list[str]):
        """The layers' weights in memory for the duration (rounding reads them)."""
        keys = [k for lp in layer_paths for k in self.layer_keys[lp]]
        self.load(keys)
        try:
            yield
        finally:
            self.drop(keys)

    def finish(self) -> None:
        """Hooks off; every tensor that stays in high precision is loaded (the result is
        saved from it); quantized experts stay codes (saved as codes, never dequantized)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.load([k for k in self.owners if k not in self.coded and k not in self.gone])
