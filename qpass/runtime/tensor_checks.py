"""Every tensor of a rebuilt compiled graph checked against what its module and spec imply,
before any kernel sees one (DESIGN §6 threat model; the layouts of docs/FORMATS.md).

A compiled checkpoint's hashes detect accidents, not strangers: whoever edits model.safetensors
can rewrite them. So each module of a registered qpass class is held to the tensors its class
and constructor arguments imply — names, exact dtype (packed codes int32 or int8 as the kernel
kind says, scales float32, zero points int32, float weights and biases in the model's dtype),
exact shape (from in/out features, group size and bits), group sizes that divide in_features,
zero points inside the code range, finite positive scales (nonzero, either sign, on the
signed grid) — and the tensors the graph reads
directly (RoPE tables, DuQuant transforms, Hadamard signs) to what their op takes. The first
contradiction is one CheckpointError naming the module, the tensor, what was expected and what
the file holds. Plugin classes (qpass.runtime.compiled.register_module_class) are not known
here and are left to their own code.

The model's dtype is that of its embedding (every Denoiser has one); a graph without an
embedding takes any float dtype for float weights."""
from __future__ import annotations

import inspect
import math

import torch
import torch.fx as fx
import torch.nn as nn

from qpass import ops
from qpass.errors import CheckpointError
from qpass.formats import packed_cols, stored_layout
from qpass.formats import kquant
from qpass.ir.qlinear import QuantLinear
from qpass.models.denoiser import RMSNorm
from qpass.models.moe import Router
from qpass.runtime import lowered, lowered_float, online
from qpass.specs import GRIDS, QuantSpec

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DAMAGED = "the checkpoint was modified or is damaged; save the model again or re-download it"


class _Want:
    """What one tensor must be: one of `dtypes`, exactly `shape`; `values` (optional) returns
    why its contents are refused, or None."""
    __slots__ = ("dtypes", "shape", "values")

    def __init__(self, dtypes, shape, values=None):
        self.dtypes, self.shape, self.values = tuple(dtypes), tuple(shape), values


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fail(where: str, what: str) -> None:
    raise CheckpointError(f"{where}: {what}; {_DAMAGED}")


# ----- value checks (the only ones that read data: scales and zero points, small) ------------
def _positive_finite(t: torch.Tensor) -> str | None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        return "holds non-finite scales (inf or NaN)"
    if t.numel() and not bool((t > 0).all()):
        return "holds scales that are not positive"
    return None


def _nonzero_finite(t: torch.Tensor) -> str | None:
    """Weight scales of the signed grid: either sign (the block's extreme decides), never 0."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        return "holds non-finite scales (inf or NaN)"
    if t.numel() and not bool((t != 0).all()):
        return "holds scales that are 0"
    return None


def _weight_scales(spec):
    return _nonzero_finite if spec.grid == "signed" else _positive_finite


def _finite(t: torch.Tensor) -> str | None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        return "holds non-finite values (inf or NaN)"
    return None


def _code_range(bits: int):
    hi = (1 << bits) - 1

    def check(t: torch.Tensor) -> str | None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > hi):
            return (f"holds zero points outside the {bits}-bit code range [0, {hi}] "
                    f"(from {int(t.min())} to {int(t.max())})")
        return None
    return check


def _signs(t: torch.Tensor) -> str | None:
    if t.numel() and not bool((t.abs() == 1).all()):
        return "holds values other than +1 and -1"
    return None


# ----- per-class contracts: (tensor names the class may hold, what they must be) ------------
def _kw(kwargs: dict, cls: type, name: str):
    """A constructor argument as the checkpoint gave it, else the constructor's default."""
    if name in kwargs:
        return kwargs[name]
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None or p.default is p.empty else p.default


def _weight_spec_layout(where: str, spec: QuantSpec, K: int) -> int:
    """Scale columns per row of a weight of K inputs under `spec` (refusing specs no weight has)."""
    if spec.is_activation_only or spec.dynamic:
        _fail(where, f"weight spec {spec} is a dynamic/per-token activation spec; weights are "
                     f"quantized once (channel, group or tensor)")
    if spec.granularity == "group":
        if K % spec.group_size:
            _fail(where, f"weight spec {spec} has group size {spec.group_size}, which does not "
                         f"divide in_features={K}")
        return K // spec.group_size
    return 1


def _linear(m, kw, mdt, where) -> dict:
    out, inp = m.out_features, m.in_features
    want = {"weight": _Want(mdt, (out, inp))}
    if _kw(kw, type(m), "bias"):
        want["bias"] = _Want(mdt, (out,))
    return want


def _router(m, kw, mdt, where) -> dict:
    want = _linear(m, kw, mdt, where)
    if "expert_bias" in m._buffers and m._buffers["expert_bias"] is not None:
        want["expert_bias"] = _Want(FLOATS, (m.out_features,), _finite)
    return want


def _embedding(m, kw, mdt, where) -> dict:
    return {"weight": _Want(mdt, (m.num_embeddings, m.embedding_dim))}


def _layer_norm(m, kw, mdt, where) -> dict:
    if not m.elementwise_affine:
        return {}
    want = {"weight": _Want(mdt, tuple(m.normalized_shape))}
    if _kw(kw, nn.LayerNorm, "bias"):
        want["bias"] = _Want(mdt, tuple(m.normalized_shape))
    return want


def _rms_norm(m, kw, mdt, where) -> dict:
    return {"weight": _Want(mdt, (_kw(kw, RMSNorm, "dim"),))}


def _act_settings(where: str, bits, grid) -> None:
    if bits not in (4, 8) or isinstance(bits, bool):
        _fail(where, f"activation bits {bits!r}: qpass quantizes activations to 4 or 8 bits")
    if grid not in GRIDS:
        _fail(where, f"activation grid {grid!r} is none of {', '.join(GRIDS)}")


def _norm_quant(m, kw, mdt, where) -> dict:
    _act_settings(where, m.bits, m.grid)
    if not (isinstance(m.eps, (int, float)) and math.isfinite(m.eps) and m.eps >= 0):
        _fail(where, f"eps={m.eps!r} is not a finite number >= 0")
    return {"weight": _Want(mdt, (_kw(kw, lowered.NormQuant, "dim"),))}


def _silu_mul_quant(m, kw, mdt, where) -> dict:
    _act_settings(where, m.bits, m.grid)
    return {}


def _float_scale_codes(spec: QuantSpec):
    """Stored E4M3 (nvfp4) / E8M0 (mx) scale codes: positive, finite, not zero."""
    bad = (lambda t: (t == 0) | (t >= 0x7F)) if spec.format == "nvfp4" else (lambda t: t == 255)

    def check(t: torch.Tensor) -> str | None:
        if t.numel() and bool(bad(t).any()):
            return f"holds {spec.format} scale codes that are zero, negative or NaN"
        return None
    return check


def _float_weight(where: str, w: QuantSpec, out: int, inp: int) -> dict:
    """What a floating-point weight (fp8, nvfp4, mx) holds: packed element codes and its
    stored scales (docs/FORMATS.md "Floating-point formats")."""
    if w.is_activation_only or w.dynamic or w.granularity == "group":
        _weight_spec_layout(where, w, inp)     # refuses activation specs, groups not dividing K
    want = {"qweight": _Want((torch.int32,), (out, packed_cols(inp, w.bits)))}
    for name, (dt, shape) in stored_layout(out, inp, w).items():
        check = _positive_finite if dt == torch.float32 else _float_scale_codes(w)
        want[name] = _Want((dt,), shape, check)
    return want


def _kquant_weight(where: str, w: QuantSpec, out: int, inp: int) -> dict:
    """What a K-quant weight (q4_k, q6_k) holds: packed codes, sub-block scale (and min) codes
    (6-bit for q4_k), float16-valued super-block scales (docs/FORMATS.md "K-quants")."""
    if inp % 256:
        _fail(where, f"{w} needs in_features a multiple of 256, found {inp}")
    want = {"qweight": _Want((torch.int32,), (out, packed_cols(inp, w.bits)))}
    six_bit = (lambda t: "holds 6-bit codes above 63" if t.numel() and bool((t > 63).any())
               else None) if not w.symmetric else None

    def f16(t: torch.Tensor) -> str | None:
        if not bool(torch.isfinite(t).all()) or not torch.equal(
                t.to(torch.float16).to(torch.float32), t):
            return "holds super-block scales that are not finite float16 numbers"
        return None
    for name, (dt, shape) in kquant.stored_layout(out, inp, w).items():
        want[name] = _Want((dt,), shape, f16 if name == "super_scales" else six_bit)
    return want


def _quant_linear(m, kw, mdt, where) -> dict:
    out, inp, w, a = m.out_features, m.in_features, m.weight_spec, m.act_spec
    want = {}
    if w is None:
        want["weight"] = _Want(mdt, (out, inp))
    elif w.is_kquant:
        want.update(_kquant_weight(where, w, out, inp))
    elif w.is_float:
        want.update(_float_weight(where, w, out, inp))
    else:
        G = _weight_spec_layout(where, w, inp)
        sshape = (1, 1) if w.granularity == "tensor" else (out, G)
        want["qweight"] = _Want((torch.int32,), (out, packed_cols(inp, w.bits)))
        want["scales"] = _Want((torch.float32,), sshape, _weight_scales(w))
        if not w.symmetric:
            want["zeros"] = _Want((torch.int32,), sshape, _code_range(w.bits))
    if _kw(kw, QuantLinear, "bias"):
        want["bias"] = _Want(mdt, (out,))
    if a is not None and not a.dynamic and m._buffers.get("act_scale") is not None:
        if a.granularity != "tensor":
            _fail(where, f"static activation spec {a}: qpass calibrates static activation "
                         f"scales per tensor only")
        want["act_scale"] = _Want((torch.float32,), (1, 1), _positive_finite)
        want["act_zero"] = _Want((torch.int32,), (1, 1), _code_range(a.bits))
    return want


def _lowered_linear(m, kw, mdt, where) -> dict:
    out, inp, w = m.out_features, m.in_features, m.weight_spec
    G = _weight_spec_layout(where, w, inp)
    if m.kind == "w8a8":
        want = {"qweight": _Want((torch.int8,), (out, inp))}
    else:
        want = {"qweight": _Want((torch.int32,), (out, packed_cols(inp, m.bits)))}
    want["scales"] = _Want((torch.float32,), (out, G), _weight_scales(w))
    if not w.symmetric:
        want["zeros"] = _Want((torch.int32,), (out, G), _code_range(w.bits))
    if _kw(kw, lowered.LoweredLinear, "bias"):
        want["bias"] = _Want(mdt, (out,))
    return want


def _lowered_float_linear(m, kw, mdt, where) -> dict:
    """A LoweredFloatLinear holds what its QuantLinear held: codes, stored scales (+ nvfp4's
    global scale), a static fp8 activation scale."""
    want = _float_weight(where, m.weight_spec, m.out_features, m.in_features)
    if _kw(kw, lowered_float.LoweredFloatLinear, "bias"):
        want["bias"] = _Want(mdt, (m.out_features,))
    if m.act_scale is not None:
        want["act_scale"] = _Want((torch.float32,), (1, 1), _positive_finite)
    return want


# class -> (the tensor names it may hold, its contract); exact classes, not subclasses
_CONTRACTS = {
    nn.Linear: (frozenset({"weight", "bias"}), _linear),
    Router: (frozenset({"weight", "bias", "expert_bias"}), _router),
    nn.Embedding: (frozenset({"weight"}), _embedding),
    nn.LayerNorm: (frozenset({"weight", "bias"}), _layer_norm),
    RMSNorm: (frozenset({"weight"}), _rms_norm),
    lowered.NormQuant: (frozenset({"weight"}), _norm_quant),
    lowered.SiluMulQuant: (frozenset(), _silu_mul_quant),
    QuantLinear: (frozenset({"weight", "bias", "qweight", "scales", "zeros", "act_scale",
                             "act_zero", "global_scale", "super_scales"}), _quant_linear),
    lowered.LoweredLinear: (frozenset({"qweight", "scales", "zeros", "bias"}), _lowered_linear),
    lowered_float.LoweredFloatLinear: (frozenset({"qweight", "scales", "global_scale",
                                                  "act_scale", "bias"}), _lowered_float_linear),
}


def _check_one(where: str, t: torch.Tensor, want: _Want) -> None:
    if t.dtype not in want.dtypes:
        _fail(where, f"expected dtype {' or '.join(_name(d) for d in want.dtypes)}, found "
                     f"{_name(t.dtype)}")
    if tuple(t.shape) != want.shape:
        _fail(where, f"expected shape {want.shape}, found {tuple(t.shape)}")
    why = want.values(t) if want.values is not None else None
    if why:
        _fail(where, why)


def _describe(m: nn.Module) -> str:
    spec = getattr(m, "weight_spec", None)
    bits = f", weight spec {spec}" if isinstance(spec, QuantSpec) else ""
    dims = f", {m.in_features} -> {m.out_features}" if hasattr(m, "out_features") and \
        isinstance(getattr(m, "in_features", None), int) else ""
    return f"{type(m).__name__}{dims}{bits}"


def _check_module(path: str, m: nn.Module, kwargs: dict, mdt) -> None:
    names, contract = _CONTRACTS[type(m)]
    held = {k: v for k, v in list(m._parameters.items()) + list(m._buffers.items())
            if v is not None}
    where = f"module {path!r} ({type(m).__name__})"
    for k in sorted(set(held) - names):
        _fail(f"{where} tensor {k!r}", f"a {type(m).__name__} holds no tensor of that name")
    want = contract(m, kwargs if isinstance(kwargs, dict) else {}, mdt, where)
    where = f"module {path!r} ({_describe(m)})"
    for k in sorted(set(held) - set(want)):
        _fail(f"{where} tensor {k!r}", f"this module has no {k!r} (its spec and arguments "
                                       f"imply only {', '.join(sorted(want)) or 'no tensors'})")
    for k in sorted(set(want) - set(held)):
        _fail(f"{where} tensor {k!r}", "missing from the checkpoint")
    for k, w in want.items():
        _check_one(f"{where} tensor {k!r}", held[k], w)


def _model_dtype(gm: nn.Module):
    """(dtypes) float weights must have: the embedding's, or any float without one."""
    dts = {m.weight.dtype for m in gm.modules() if type(m) is nn.Embedding
           and isinstance(m.weight, torch.Tensor)}
    if len(dts) > 1:
        _fail("the embeddings", f"they have different dtypes ({', '.join(sorted(map(_name, dts)))})")
    if dts and next(iter(dts)) not in FLOATS:
        _fail("the embedding", f"its weight is {_name(next(iter(dts)))}, not a float dtype")
    return tuple(dts) if dts else FLOATS


# ----- tensors the graph reads directly (get_attr), checked by the op that reads them --------
def _attr(gm, node) -> tuple[str, torch.Tensor] | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        owner, _, name = node.target.rpartition(".")
        t = getattr(gm.get_submodule(owner) if owner else gm, name, None)
        if isinstance(t, torch.Tensor):
            return node.target, t
    return None


def _arg(node: fx.Node, i: int, key: str):
    return node.args[i] if len(node.args) > i else node.kwargs.get(key)


def _check_graph_tensors(gm: fx.GraphModule, mdt, config) -> None:
    # RoPE tables stay fp32 whatever the model dtype, fp64 for a float64 model
    rope_dt = (torch.float32, torch.float64) if len(mdt) > 1 else \
        (torch.float64,) if mdt == (torch.float64,) else (torch.float32,)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is ops.rope:
            tables = [_attr(gm, _arg(node, i, k)) for i, k in ((1, "cos"), (2, "sin"))]
            for got in tables:
                if got is None:
                    continue
                name, t = got
                if config is not None:       # (positions, head dim) of the model
                    want = (config.max_seq_len, config.head_dim)
                elif t.dim() != 2:
                    _fail(f"RoPE table {name!r}", f"expected 2 dims (positions, head dim), "
                                                  f"found shape {tuple(t.shape)}")
                else:                        # cos and sin alike
                    want = tuple(tables[0][1].shape) if tables[0] else tuple(t.shape)
                _check_one(f"RoPE table {name!r}", t, _Want(rope_dt, want, _finite))
        elif node.target is online.channel_transform:
            got = _attr(gm, _arg(node, 1, "matrix"))
            if got is None:
                continue
            name, t = got
            n = t.shape[0] if t.dim() == 2 else -1
            _check_one(f"transform matrix {name!r}", t, _Want(mdt, (n, n), _finite))
            for user in node.users:
                m = gm.get_submodule(user.target) if user.op == "call_module" else None
                k = getattr(m, "in_features", None)
                if isinstance(k, int) and k != n:
                    _fail(f"transform matrix {name!r}", f"it is {n} x {n}, but it feeds "
                                                        f"{user.target!r} of in_features={k}")
        elif node.target in (lowered.hadamard, online.online_hadamard):
            got = _attr(gm, _arg(node, 1, "signs"))
            if got is not None:
                name, t = got
                if t.dim() != 1:
                    _fail(f"Hadamard signs {name!r}", f"expected a vector, found shape "
                                                      f"{tuple(t.shape)}")
                _check_one(f"Hadamard signs {name!r}", t, _Want(FLOATS, t.shape, _signs))


def check_tensors(gm: fx.GraphModule, module_specs: dict, config=None) -> None:
    """CheckpointError (one line: module, tensor, expected, found) at the first tensor of `gm`
    that contradicts its module, its spec, or the op that reads it. `module_specs`: the
    graph's {path: {"class", "kwargs", ...}}; `config`: the ModelConfig when known."""
    mdt = _model_dtype(gm)
    for path, m in gm.named_modules():
        if type(m) in _CONTRACTS:
            entry = module_specs.get(path) if isinstance(module_specs, dict) else None
            _check_module(path, m, entry.get("kwargs", {}) if isinstance(entry, dict) else {},
                          mdt)
    _check_graph_tensors(gm, mdt, config)
