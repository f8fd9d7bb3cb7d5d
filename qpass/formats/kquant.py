"""llama.cpp's K-quants (q4_k, q6_k; qpass/specs/kquant_spec.py has the layouts): sub-block
scales, codes and dequantization, and the round-to-nearest search for the scales.

What a K-quant weight (N, K) holds (`KQuantParts`, then QuantizedWeight's fields):
  codes  uint8 (N, K): q4_k u in 0..15, q6_k u in 0..63 (the signed code is u − 32)
  sc     (N, K/sub): sub-block scale codes, uint8 0..63 (q4_k) or int8 (q6_k)
  m      (N, K/sub): uint8 0..63 sub-block min codes (q4_k), else None
  sup    float32 (N, K/256, 1|2) holding float16 numbers: d (and dmin, q4_k)
and dequantizes in float32 exactly as ggml (dequantize_row_q4_K / _q6_K) and gguf-py do:
  s = d·sc, mn = dmin·m  (exact in float32: an 11-bit significand times an 8-bit integer)
  q4_k  w = s·u − mn      (s·u exact, one rounding)
  q6_k  w = s·(u − 32)    (one rounding)
Codes under given scales are the nearest: u = clamp(round((w + mn)/s)) (q4_k), clamp(round(w/s)
, −32, 31) + 32 (q6_k), round half to even.

Round to nearest (`kquant_rtn`) searches the scales as llama.cpp's quantize_row_q4_K_ref /
q6_K_ref do, and then further, always minimising the squared error of the weights (weighted per
column by `importance` when given: GPTQ passes its Hessian diagonal):
  1. per sub-block, a (scale, min) pair: llama.cpp's make_qkx2_quants candidates (q4_k: the
     range over 15 + rmin + δ·i steps; q6_k make_qx_quants: −(32 + δ·i)/max) each refitted by
     least squares on its codes, the codes then rounded again under the fit, the best kept;
  2. per super-block, float16 d (and dmin) from the largest sub-block scale (min) over 63 (q6_k:
     the signed one over −128 or over 127) and neighbours ±1 %, ±3 %, then REFITS least-squares
     refits of d (and dmin) to the codes chosen so far; under each, every sub-block's integer
     scale the nearest to its ideal and ±1 (q6_k ±2, and the scale refitted to its codes), q4_k
     each with the min nearest its ideal, ±1 and the min refitted to its codes; codes
     re-rounded under every candidate, the least squared error kept per sub-block, then per
     super-block.
A sub-block scale code of 0 is never chosen (code 0 of q4_k / 32 of q6_k gives what sc = 0
would, so a nonzero scale is never worse) and d is at least the smallest float16 (2^−24), so
every effective scale is nonzero: GPTQ divides by it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError
from ..specs import QuantSpec
from ..specs.kquant_spec import KQUANT_FORMATS, QK_K, KQuantFormat

F16_MIN = 2.0 ** -24                  # the smallest float16 (subnormal): d's floor
F16_MAX = 65504.0
# step 1 candidates (llama.cpp's quantize_row_q4_K_ref: make_qkx2_quants(32, 15, ..., -1, 0.1,
# 20); q6_k: make_qx_quants's −(32 + 0.1·i)/max, i in −9..9), here widened a little
Q4K_STEPS = [-1.5 + 0.1 * i for i in range(31)]
Q6K_STEPS = [0.1 * i for i in range(-12, 13)]
# step 2: super-block scale candidates, factors on the largest sub-block scale / 63 (or −128)
SUPER_FACTORS = (1.0, 0.99, 1.01, 0.97, 1.03)
REFITS = 2                            # least-squares refits of the super-block scales
ROW_CHUNK_ELEMS = 1 << 21             # weights per chunk of rows searched at once


def kformat(spec: QuantSpec) -> KQuantFormat:
    return KQUANT_FORMATS[spec.format]


@dataclass
class KQuantParts:
    """A K-quant weight's scales as stored: sub-block scale codes `sc`, min codes `m` (q4_k)
    and float16-valued super-block scales `sup` (N, K/256, 1|2)."""
    sc: torch.Tensor
    m: torch.Tensor | None
    sup: torch.Tensor


def stored_layout(N: int, K: int, spec) -> dict[str, tuple[torch.dtype, tuple]]:
    """{tensor suffix: (dtype, shape)} a K-quant weight (N, K) keeps besides its codes."""
    spec = QuantSpec.parse(spec)
    fmt = kformat(spec)
    spec.check_shape(K)
    G = K // fmt.sub
    out = {"scales": (torch.uint8 if fmt.with_min else torch.int8, (N, G))}
    if fmt.with_min:
        out["zeros"] = (torch.uint8, (N, G))
    out["super_scales"] = (torch.float32, (N, K // QK_K, fmt.super_parts))
    return out


def effective(sc: torch.Tensor, m: torch.Tensor | None, sup: torch.Tensor, spec
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sub-block float32 scale s = d·sc and min mn = dmin·m (None for q6_k), (N, K/sub)."""
    fmt = kformat(QuantSpec.parse(spec))
    sup = sup.to(torch.float32)
    s = sup[..., 0].repeat_interleave(fmt.n_sub, dim=-1) * sc.to(torch.float32)
    if not fmt.with_min:
        return s, None
    return s, sup[..., 1].repeat_interleave(fmt.n_sub, dim=-1) * m.to(torch.float32)


def _sub_view(x: torch.Tensor, fmt: KQuantFormat) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], x.shape[-1] // fmt.sub, fmt.sub)


def kquant_codes(w: torch.Tensor, spec, s: torch.Tensor, mn: torch.Tensor | None
                 ) -> torch.Tensor:
    """uint8 codes (w's shape) of w (…, K) under effective sub-block scales s and mins mn."""
    fmt = kformat(QuantSpec.parse(spec))
    x = _sub_view(w.to(torch.float32), fmt)
    return _codes(x, s.unsqueeze(-1), None if mn is None else mn.unsqueeze(-1), fmt
                  ).to(torch.uint8).reshape(w.shape)


def _codes(x, s, mn, fmt: KQuantFormat) -> torch.Tensor:
    """Float codes (unsigned) of x under broadcastable s, mn; s = 0 gives the zero code."""
    safe = torch.where(s == 0, torch.ones_like(s), s)
    if fmt.with_min:
        u = torch.round((x + mn) / safe).clamp_(0, (1 << fmt.bits) - 1)
        return torch.where(s == 0, torch.zeros_like(u), u)
    half = 1 << (fmt.bits - 1)
    u = torch.round(x / safe).clamp_(-half, half - 1)
    return torch.where(s == 0, torch.zeros_like(u), u) + half


def _values(u, s, mn, fmt: KQuantFormat) -> torch.Tensor:
    """The format's float32 weights of float codes u (ggml's order of operations)."""
    if fmt.with_min:
        return s * u - mn
    return s * (u - (1 << (fmt.bits - 1)))


def kquant_dequantize(codes: torch.Tensor, spec, sc, m, sup,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float32 weights (cast to dtype) of codes (N, K) and stored scales, bit for bit what
    ggml and gguf-py compute from the GGUF blocks."""
    spec = QuantSpec.parse(spec)
    fmt = kformat(spec)
    s, mn = effective(sc, m, sup, spec)
    u = _sub_view(codes.to(torch.float32), fmt)
    w = _values(u, s.unsqueeze(-1), None if mn is None else mn.unsqueeze(-1), fmt)
    return w.reshape(codes.shape).to(dtype)


# ----- round to nearest: the scale search ------------------------------------------------------
def kquant_rtn(w: torch.Tensor, spec, importance: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, KQuantParts]:
    """(codes uint8 (N, K), stored scales) of w (N, K): the search in the module doc, minimising
    Σ importance_k·(w − ŵ)² (importance: (K,) non-negative, default 1)."""
    spec = QuantSpec.parse(spec)
    fmt = kformat(spec)
    if w.dim() != 2:
        raise SpecError(f"a K-quant weight is 2-D (N, K), got shape {tuple(w.shape)}")
    N, K = w.shape
    spec.check_shape(K)
    x = w.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise SpecError(f"{spec}: the weight holds NaN or Inf values")
    imp = None
    if importance is not None:
        imp = importance.detach().to(torch.float32).reshape(1, K).clamp(min=0)
        imp = _sub_view(imp, fmt).reshape(1, K // QK_K, fmt.n_sub, fmt.sub)
    codes = torch.empty(N, K, dtype=torch.uint8, device=w.device)
    G = K // fmt.sub
    sc = torch.empty(N, G, dtype=torch.uint8 if fmt.with_min else torch.int8, device=w.device)
    m = torch.empty(N, G, dtype=torch.uint8, device=w.device) if fmt.with_min else None
    sup = torch.empty(N, K // QK_K, fmt.super_parts, dtype=torch.float32, device=w.device)
    rows = max(1, ROW_CHUNK_ELEMS // max(K, 1))
    for r0 in range(0, N, rows):
        xc = x[r0:r0 + rows].reshape(-1, K // QK_K, fmt.n_sub, fmt.sub)
        search = _search_q4k if fmt.with_min else _search_q6k
        u, sc_c, m_c, sup_c = search(xc, imp, fmt)
        n = xc.shape[0]
        codes[r0:r0 + n] = u.reshape(n, K).to(torch.uint8)
        sc[r0:r0 + n] = sc_c.reshape(n, G).to(sc.dtype)
        if m is not None:
            m[r0:r0 + n] = m_c.reshape(n, G).to(torch.uint8)
        sup[r0:r0 + n] = sup_c
    return codes, KQuantParts(sc, m, sup)


def _f16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16 (nearest even, as GGML_FP32_TO_FP16), as float32; a magnitude
    past float16's range is a SpecError."""
    h = x.to(torch.float16)
    if bool(torch.isinf(h).any()):
        raise SpecError("a K-quant super-block scale exceeds float16's largest number (65504): "
                        "the weights are too large for GGUF K-quants")
    return h.to(torch.float32)


def _err(x, u, s, mn, imp, fmt) -> torch.Tensor:
    """Σ imp·(x − ŵ)² over the last dim."""
    d = _values(u, s, mn, fmt) - x
    d = d * d
    return (d if imp is None else d * imp).sum(-1)


def _lsq_q4k(x, L, wt, sw, sx):
    """Least-squares (scale, min) of x ≈ scale·L + min with weights wt; min clamped to ≤ 0."""
    sl, sl2, sxl = (wt * L).sum(-1), (wt * L * L).sum(-1), (wt * L * x).sum(-1)
    D = sw * sl2 - sl * sl
    ok = D > 0
    Ds = torch.where(ok, D, torch.ones_like(D))
    scale = (sw * sxl - sx * sl) / Ds
    mn = (sl2 * sx - sl * sxl) / Ds
    pos = mn > 0
    scale = torch.where(pos, sxl / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), scale)
    mn = torch.where(pos, torch.zeros_like(mn), mn)
    return scale, mn, ok & (scale > 0)


def _search_q4k(x, imp, fmt: KQuantFormat):
    """x (R, S, 8, 32) -> codes, sc, m (R, S, 8), sup (R, S, 2)."""
    nmax = (1 << fmt.bits) - 1
    wt = torch.ones_like(x) if imp is None else imp.expand_as(x)
    lo = x.amin(-1).clamp(max=0.0)
    hi = x.amax(-1)
    rng = hi - lo
    sw, sx = wt.sum(-1), (wt * x).sum(-1)
    # step 1: a continuous (scale, min ≤ 0) per sub-block, min stored as −min ≥ 0
    best_s = rng / nmax
    best_m = lo
    best_e = _err(x, _codes(x, best_s[..., None], -best_m[..., None], fmt),
                  best_s[..., None], -best_m[..., None], imp, fmt)
    safe_rng = torch.where(rng > 0, rng, torch.ones_like(rng))
    for step in Q4K_STEPS:
        iscale = (nmax + step) / safe_rng
        L = torch.round(iscale[..., None] * (x - lo[..., None])).clamp_(0, nmax)
        s, mn, ok = _lsq_q4k(x, L, wt, sw, sx)
        s = torch.where(ok, s, best_s)
        mn = torch.where(ok, mn, best_m)
        u = _codes(x, s[..., None], -mn[..., None], fmt)
        e = _err(x, u, s[..., None], -mn[..., None], imp, fmt)
        better = ok & (e < best_e)
        best_e = torch.where(better, e, best_e)
        best_s = torch.where(better, s, best_s)
        best_m = torch.where(better, mn, best_m)
    scales, mins = best_s.clamp(min=0), (-best_m).clamp(min=0)
    # step 2: float16 d, dmin per super-block and 6-bit codes per sub-block
    top = (1 << fmt.scale_bits) - 1
    max_s, max_m = scales.amax(-1), mins.amax(-1)
    result = None
    for f in SUPER_FACTORS:
        d = _f16(max_s / top * f).clamp(min=F16_MIN)
        dmin = _f16(max_m / top * f).clamp(min=F16_MIN)
        result = _keep(result, *_q4k_codes(x, wt, imp, fmt, d, dmin, scales, mins))
    for _ in range(REFITS):
        # d, dmin refitted by least squares to the chosen codes, as one more candidate
        _, (u, sc, m, d, dmin) = result
        a = sc[..., None] * u
        b = -m[..., None].expand_as(u)
        saa, sab, sbb = ((wt * a * a).sum((-1, -2)), (wt * a * b).sum((-1, -2)),
                         (wt * b * b).sum((-1, -2)))
        sax, sbx = (wt * a * x).sum((-1, -2)), (wt * b * x).sum((-1, -2))
        det = saa * sbb - sab * sab
        ok = det > 0
        det = torch.where(ok, det, torch.ones_like(det))
        d2 = torch.where(ok, (sax * sbb - sbx * sab) / det, d)
        dmin2 = torch.where(ok, (saa * sbx - sab * sax) / det, dmin)
        d2 = _f16(d2.clamp(min=F16_MIN, max=F16_MAX))
        dmin2 = _f16(dmin2.clamp(min=F16_MIN, max=F16_MAX))
        result = _keep(result, *_q4k_codes(x, wt, imp, fmt, d2, dmin2, scales, mins))
    _, (u, sc, m, d, dmin) = result
    return u, sc, m, torch.stack([d, dmin], dim=-1)


def _q4k_codes(x, wt, imp, fmt: KQuantFormat, d, dmin, scales, mins):
    """(error per super-block, (codes, sc, m, d, dmin)) under super-block scales d, dmin: per
    sub-block, sc near scale/d (±1) and for each m near min/dmin (±1) and the min refitted to
    that sc's codes, the least error kept."""
    top = (1 << fmt.scale_bits) - 1
    sc0 = torch.round(scales / d[..., None]).clamp(1, top)
    m0 = torch.round(mins / dmin[..., None]).clamp(0, top)
    sw = wt.sum(-1).clamp(min=torch.finfo(torch.float32).tiny)
    cand = None
    for ds in (-1, 0, 1):
        sc = (sc0 + ds).clamp(1, top)
        s = (d[..., None] * sc)[..., None]
        u = _codes(x, s, (dmin[..., None] * m0)[..., None], fmt)
        mn_fit = (wt * (s * u - x)).sum(-1) / sw            # the best min for these codes
        m1 = torch.round(mn_fit / dmin[..., None]).clamp(0, top)
        for m in ((m0 - 1).clamp(0, top), m0, (m0 + 1).clamp(0, top), m1):
            mn = (dmin[..., None] * m)[..., None]
            u = _codes(x, s, mn, fmt)
            cand = _keep(cand, _err(x, u, s, mn, imp, fmt), (u, sc, m))
    return cand[0].sum(-1), (*cand[1], d, dmin)


def _keep(best, e, parts):
    """(error, parts) keeping, element-wise over e's shape, the smaller error (the first on a
    tie); parts broadcast against e with trailing dims."""
    if best is None:
        return e, tuple(p.clone() for p in parts)
    be, bp = best
    better = e < be
    out = []
    for old, new in zip(bp, parts):
        mask = better.reshape(better.shape + (1,) * (new.dim() - better.dim()))
        out.append(torch.where(mask, new, old))
    return torch.where(better, e, be), tuple(out)


def _search_q6k(x, imp, fmt: KQuantFormat):
    """x (R, S, 16, 16) -> codes, sc (R, S, 16), None, sup (R, S, 1)."""
    half = 1 << (fmt.bits - 1)                  # 32
    wt = torch.ones_like(x) if imp is None else imp.expand_as(x)
    idx = x.abs().argmax(-1, keepdim=True)
    mx = x.gather(-1, idx).squeeze(-1)          # the signed extreme (llama.cpp: first largest)
    safe_mx = torch.where(mx != 0, mx, torch.ones_like(mx))
    # step 1: a continuous signed scale per sub-block
    best_s = -mx / half
    best_e = _err(x, _codes(x, best_s[..., None], None, fmt), best_s[..., None], None, imp, fmt)
    for step in Q6K_STEPS:
        iscale = -(half + step) / safe_mx
        L = torch.round(iscale[..., None] * x).clamp_(-half, half - 1)
        sl2 = (wt * L * L).sum(-1)
        ok = sl2 > 0
        s = (wt * L * x).sum(-1) / torch.where(ok, sl2, torch.ones_like(sl2))
        ok = ok & (s != 0)
        s = torch.where(ok, s, best_s)
        e = _err(x, _codes(x, s[..., None], None, fmt), s[..., None], None, imp, fmt)
        better = ok & (e < best_e)
        best_e = torch.where(better, e, best_e)
        best_s = torch.where(better, s, best_s)
    # step 2: float16 d per super-block (the signed largest scale over −128, or over 127) and
    # int8 codes per sub-block
    idx = best_s.abs().argmax(-1, keepdim=True)
    max_s = best_s.gather(-1, idx).squeeze(-1)
    result = None
    for denom in (-128.0, 127.0):
        for f in SUPER_FACTORS:
            result = _keep(result, *_q6k_codes(x, wt, imp, fmt, _f16(max_s / denom * f), best_s))
    for _ in range(REFITS):
        # d refitted by least squares to the chosen codes, as one more candidate
        _, (u, sc, d) = result
        a = sc[..., None] * (u - half)
        saa, sax = (wt * a * a).sum((-1, -2)), (wt * a * x).sum((-1, -2))
        d2 = torch.where(saa > 0, sax / torch.where(saa > 0, saa, torch.ones_like(saa)), d)
        result = _keep(result, *_q6k_codes(x, wt, imp, fmt, _f16(d2.clamp(-F16_MAX, F16_MAX)),
                                           best_s))
    _, (u, sc, d) = result
    return u, sc, None, d[..., None]


def _q6k_codes(x, wt, imp, fmt: KQuantFormat, d, scales):
    """(error per super-block, (codes, sc, d)) under the super-block scale d: per sub-block, sc
    near scale/d (±2) and the scale refitted to the nearest one's codes, the least error kept."""
    half = 1 << (fmt.bits - 1)
    d = torch.where(d.abs() < F16_MIN, torch.full_like(d, F16_MIN), d)
    sc0 = torch.round(scales / d[..., None]).clamp(-128, 127)
    u0 = _codes(x, (d[..., None] * _nonzero(sc0, scales, d))[..., None], None, fmt) - half
    s2 = (wt * u0 * u0).sum(-1)
    fit = (wt * u0 * x).sum(-1) / torch.where(s2 > 0, s2, torch.ones_like(s2))
    sc1 = torch.round(fit / d[..., None]).clamp(-128, 127)
    cand = None
    for sc in (sc0 - 2, sc0 - 1, sc0, sc0 + 1, sc0 + 2, sc1):
        sc = _nonzero(sc.clamp(-128, 127), scales, d)
        s = (d[..., None] * sc)[..., None]
        u = _codes(x, s, None, fmt)
        cand = _keep(cand, _err(x, u, s, None, imp, fmt), (u, sc))
    return cand[0].sum(-1), (*cand[1], d)


def _nonzero(sc, scales, d):
    """sc = 0 would zero the sub-block; ±1 with the ideal scale's sign never does worse."""
    return torch.where(sc == 0, torch.sign(scales / d[..., None]) + (scales == 0), sc)


def kquant_fake_quantize(x: torch.Tensor, spec) -> torch.Tensor:
    """Round to nearest and back, in x's dtype (x (N, K) or (…, K))."""
    spec = QuantSpec.parse(spec)
    w = x.reshape(-1, x.shape[-1])
    codes, p = kquant_rtn(w, spec)
    return kquant_dequantize(codes, spec, p.sc, p.m, p.sup).reshape(x.shape).to(x.dtype)


def check_parts(N: int, K: int, spec, sc, m, sup) -> str | None:
    """Why stored K-quant scales are not what the format holds (None when they are)."""
    spec = QuantSpec.parse(spec)
    fmt = kformat(spec)
    for key, (dt, shape) in stored_layout(N, K, spec).items():
        t = {"scales": sc, "zeros": m, "super_scales": sup}[key]
        if t is None or t.dtype != dt or tuple(t.shape) != shape:
            return (f"{key}: expected {dt} {shape}, found "
                    f"{None if t is None else (t.dtype, tuple(t.shape))}")
    if fmt.with_min and ((sc > 63).any() or (m > 63).any()):
        return "6-bit sub-block scale or min codes above 63"
    if not bool(torch.isfinite(sup).all()) or not torch.equal(sup.to(torch.float16).to(
            torch.float32), sup):
        return "super-block scales that are not finite float16 numbers"
    return None
