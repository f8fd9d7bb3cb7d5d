"""A quantized model captured as it is (DESIGN §2, §7): the transformers model itself, its
linears replaced by QuantLinear modules and its expert slices by their dequantized codes, so
its own forward and its own generation (`generate`, DiffusionGemma's block diffusion) run the
quantized weights.

On disk (docs/FORMATS.md "As-is checkpoint"), DIR holds what transformers reads —
config.json, generation_config.json, the tokenizer, the model's own .py files when it ships
them, and model.safetensors with every tensor that stayed in high precision, written by the
model's own save_pretrained — plus qpass_quantized.safetensors (packed codes, scales and
zeros of every quantized linear and of every expert of every expert store) and
qpass_as_is.json (format marker, items, specs, report, sha256 of every file). load()
verifies every hash first, builds the model with its own code (remote code only when
trusted), then puts the codes back."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from qpass import folders
from qpass.errors import CheckpointError
from qpass.formats import QuantizedWeight
from qpass.ir.qlinear import QuantLinear
from qpass.specs import QuantSpec

from qpass.runtime.as_is_manifest import (CODES, FORMAT, MANIFEST, MANIFEST_SCHEMA,  # noqa: F401
                                         VERSION, as_is_files, describe_as_is,
                                         is_as_is_checkpoint)


class AsIsModel(nn.Module):
    """`model` (a transformers module, quantized in place) with what qpass did to it."""

    def __init__(self, model: nn.Module, structure, specs: dict, codes: dict, report: dict,
                 path: Path | None = None):
        super().__init__()
        self.model = model
        self.structure = structure
        self.specs = specs                    # path → (weight spec, act spec)
        self.codes = codes                    # expert store path → {param: [QuantizedWeight]}
        self.report = report
        self.path = path

    @property
    def tokenizer(self):
        return getattr(self.model, "tokenizer", None)

    @property
    def config(self):
        return self.model.config

    @property
    def qpass_as_is(self) -> dict:
        return getattr(self.model, "qpass_as_is", {})

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def own_forward(self):
        """The model's own forward (its signature says which inputs it takes)."""
        return self.model.forward

    def generate(self, *args, **kwargs):
        """The model's own generation (transformers' generate, DiffusionGemma's block
        diffusion sampler, …) on the quantized weights."""
        return self.model.generate(*args, **kwargs)

    def items(self) -> list[dict]:
        """One row per linear and expert store: path, aliases, kind, role, specs."""
        rows = []
        for it in self.structure:
            w, a = self.specs.get(it["path"], (None, None))
            rows.append({**it, "weight_spec": str(w) if w else None,
                         "act_spec": str(a) if a else None})
        return rows

    def weight_nbytes(self) -> dict[str, int]:
        """Bytes of the weights as stored: packed codes for quantized items, the float
        tensors for the rest (tied tensors once)."""
        seen, quant, floats = set(), 0, 0
        for m in self.model.modules():
            if isinstance(m, QuantLinear) and id(m) not in seen:
                seen.add(id(m))
                quant += m.weight_nbytes()
        for per in self.codes.values():
            for qws in per.values():
                quant += sum(q.nbytes() for q in qws)
        coded = {id(p) for path in self.codes
                 for _, p in _expert_params(self.model.get_submodule(path))}
        for p in {id(t): t for t in self.model.parameters()}.values():
            if id(p) not in coded:
                floats += p.numel() * p.element_size()
        return {"quantized": quant, "float": floats, "total": quant + floats}

    def save(self, directory, overwrite: bool = True) -> Path:
        return save(self, directory, overwrite)

    def extra_repr(self) -> str:
        return f"as-is {type(self.model).__name__}, scheme {self.report.get('scheme')}"


def _expert_params(store):
    return [(n, p) for n, p in store.named_parameters(recurse=False) if p.dim() == 3]


def structure_rows(structure) -> list[dict]:
    """The manifest's items from a ModelStructure."""
    return [{"path": it.path, "aliases": list(it.aliases), "kind": it.kind, "role": it.role}
            for it in structure.items]


# ---- save -------------------------------------------------------------------------------
def save(q: AsIsModel, directory, overwrite: bool = True) -> Path:
    from safetensors.torch import save_file
    from qpass.runtime.atomic_dir import commit, discard, new_temporary
    from qpass.runtime.checkpoint import sha256
    from qpass.models.tokenizer import save_tokenizer
    out = Path(directory)
    _check_replaceable(out, overwrite)
    model = q.model
    tmp = new_temporary(out)
    try:
        rows, codes = [], {}
        quantized_paths = set()
        for it in q.structure:
            w, a = q.specs.get(it["path"], (None, None))
            row = {**{k: it[k] for k in ("path", "aliases", "kind", "role")},
                   "weight_spec": str(w) if w else None, "act_spec": str(a) if a else None}
            if it["kind"] == "weight":              # a plain matrix, kept (model.safetensors)
                row["shape"] = list(model.get_parameter(it["path"]).shape)
                rows.append(row)
                continue
            mod = model.get_submodule(it["path"])
            if it["kind"] == "linear":
                row["shape"] = [mod.out_features, mod.in_features]
                if isinstance(mod, QuantLinear) and mod.weight_spec is not None:
                    quantized_paths.update(it["aliases"])
                    codes.update(mod.quantized_weight().state_dict(it["path"]))
                    if mod.bias is not None:
                        codes[it["path"] + ".bias"] = mod.bias.detach()
            else:
                params = dict(_expert_params(mod))
                row["shape"] = [next(iter(params.values())).shape[0]]
                row["params"] = {n: list(p.shape) for n, p in params.items()}
                if it["path"] in q.codes:
                    row["param_specs"] = {n: str(qws[0].spec)
                                          for n, qws in q.codes[it["path"]].items()}
                    quantized_paths.update(f"{a}.{n}" for a in it["aliases"] for n in params)
                    for n, qws in q.codes[it["path"]].items():
                        for field, t in _stacked(qws).items():
                            codes[f"{it['path']}.{n}.{field}"] = t
            rows.append(row)
        kept = {k: v for k, v in model.state_dict().items()
                if not any(k == p or k.startswith(p + ".") for p in quantized_paths)}
        from qpass.models.as_is import quiet_transformers
        with quiet_transformers():
            model.save_pretrained(tmp, state_dict=kept)
        save_file({k: v.detach().contiguous().cpu() for k, v in codes.items()}, str(tmp / CODES))
        if getattr(model, "tokenizer", None) is not None:
            save_tokenizer(model.tokenizer, tmp)
        info = getattr(model, "qpass_as_is", {})
        if info.get("remote"):
            _copy_code(Path(model.checkpoint_dir), tmp)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        manifest = {"format": FORMAT, "version": VERSION,
                    "architecture": info.get("architecture", type(model).__name__),
                    "remote": bool(info.get("remote")), "items": rows, "report": q.report,
                    "files": {p.name: sha256(p) for p in sorted(tmp.iterdir())}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        commit(tmp, out, replace=overwrite)
    finally:
        discard(tmp)
    q.path = out
    return out


def _stacked(qws: list[QuantizedWeight]) -> dict[str, torch.Tensor]:
    out = {"qweight": torch.stack([q.packed for q in qws]),
           "scales": torch.stack([q.scale for q in qws])}
    if qws[0].zero is not None:
        out["zeros"] = torch.stack([q.zero for q in qws])
    if qws[0].global_scale is not None:                  # nvfp4: one per expert
        out["global_scale"] = torch.stack([q.global_scale for q in qws])
    return out


def _copy_code(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.name.endswith(".py"):
            shutil.copyfile(folders.regular_file(p, src, "code"), dst / p.name)


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Only what qpass wrote is replaced, and only when asked (checkpoint.check_target)."""
    from qpass.runtime.checkpoint import check_target, qpass_files
    check_target(out)
    if os.path.lexists(out) and qpass_files(out) and not overwrite:
        raise CheckpointError(f"{out} already holds a qpass checkpoint; pass overwrite=True "
                              f"(--overwrite) to replace it")


# ---- load -------------------------------------------------------------------------------
def load(directory, device=None, trust_remote_code: bool = False) -> AsIsModel:
    """An AsIsModel from a directory save() wrote (hashes verified before any read)."""
    from safetensors import safe_open
    from qpass.runtime.checkpoint import sha256
    from qpass.models.as_is import load_as_is
    d = Path(directory)
    man = folders.read_json(d / MANIFEST, d, folders.CAPS["manifest"], MANIFEST_SCHEMA)
    if man["format"] != FORMAT or man["version"] > VERSION:
        raise CheckpointError(f"{d}/{MANIFEST} is format {man['format']!r} version "
                              f"{man['version']}; this qpass reads {FORMAT} up to {VERSION}")
    for name, digest in man["files"].items():
        f = folders.regular_file(d / folders.check_name(name), d, "shard")
        if sha256(f) != digest:
            raise CheckpointError(f"{d}/{name} does not match its hash in {MANIFEST}: the "
                                  f"checkpoint was modified or truncated; re-run quantize")
    listed = set(man["files"]) | {MANIFEST}
    extra = sorted(p.name for p in d.iterdir() if p.name not in listed)
    if extra:
        raise CheckpointError(f"{d} holds files its manifest does not list ({extra[:3]}); "
                              f"qpass loads only what it wrote")
    # the quantized weights are missing from model.safetensors on purpose: load_as_is keeps
    # transformers quiet about them, and the codes are put in below
    model = load_as_is(d, device=device, trust_remote_code=trust_remote_code)
    with safe_open(str(d / CODES), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    specs, codes = {}, {}
    for it in man["items"]:
        w = QuantSpec.parse(it["weight_spec"]) if it.get("weight_spec") else None
        a = QuantSpec.parse(it["act_spec"]) if it.get("act_spec") else None
        specs[it["path"]] = (w, a)
        if w is None:
            continue
        if it["kind"] == "linear":
            _put_linear(model, it, w, a, tensors)
        else:
            codes[it["path"]] = _put_experts(model, it, tensors)
    return AsIsModel(model, [{k: it[k] for k in ("path", "aliases", "kind", "role")}
                             for it in man["items"]], specs, codes, man.get("report") or {}, d)


def _put_linear(model, it: dict, w, a, tensors: dict) -> None:
    N, K = it["shape"]
    qw = QuantizedWeight.from_state_dict(tensors, it["path"], w, (N, K))
    bias = tensors.get(it["path"] + ".bias")
    q = QuantLinear(K, N, w, a, bias is not None)
    q.set_qweight(qw)
    if bias is not None:
        q.bias = nn.Parameter(bias)
    dev = next(iter(model.parameters())).device
    q = q.to(dev)
    for alias in it["aliases"]:
        parent, _, name = alias.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, q)


def _put_experts(model, it: dict, tensors: dict) -> dict:
    store = model.get_submodule(it["path"])
    out = {}
    for name, P in _expert_params(store):
        E, N, K = P.shape
        w = QuantSpec.parse((it.get("param_specs") or {})[name])
        per = []
        for e in range(E):
            sd = {f"x.{f}": tensors[f"{it['path']}.{name}.{f}"][e]
                  for f in ("qweight", "scales", "zeros", "global_scale")
                  if f"{it['path']}.{name}.{f}" in tensors}
            qw = QuantizedWeight.from_state_dict(sd, "x", w, (N, K))
            with torch.no_grad():
                P.data[e] = qw.dequantize(P.dtype).to(P.device)
            per.append(qw)
        out[name] = per
    return out
