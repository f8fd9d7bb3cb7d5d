"""The tensors of a GraphModule as a checkpoint stores them (DESIGN §6): the unique tensors to
write, and for every parameter/buffer name its kind record {"kind": "param"|"buffer",
"persistent", "requires_grad" (params), "alias_of" (a name stored earlier)}. One function for
the whole model (CompiledDenoiser.save) and for one streamed stage's modules (DiskStore)."""
from __future__ import annotations

import torch

from qpass.errors import CheckpointError


def tensor_records(gm, targets=None) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(name -> tensor on the CPU, contiguous, each tensor once; name -> kind record) for every
    parameter and buffer of `gm`, or only of the submodules at `targets` (module paths)."""
    store, kinds, first = {}, {}, {}
    roots = [("", gm)] if targets is None else [(t, gm.get_submodule(t)) for t in targets]
    for prefix, mod in roots:
        persistent = set(mod.state_dict(keep_vars=True))
        items = [(n, t, "param") for n, t in mod.named_parameters(remove_duplicate=False)] + \
                [(n, t, "buffer") for n, t in mod.named_buffers(remove_duplicate=False)]
        for name, t, kind in items:
            full = f"{prefix}.{name}" if prefix else name
            if t.device.type == "meta":
                raise CheckpointError(f"tensor {full!r} is on the meta device: a structure-only "
                                      f"model cannot be saved")
            info = {"kind": kind, "persistent": name in persistent}
            if kind == "param":
                info["requires_grad"] = bool(t.requires_grad)
            if id(t) in first:
                info["alias_of"] = first[id(t)]
            else:
                first[id(t)] = full
                store[full] = t.detach().to("cpu").contiguous()
            kinds[full] = info
    return store, kinds
