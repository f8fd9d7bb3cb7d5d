"""Operands of every lowered op, valid ones and lying ones (issue 25, part 3): what
test_kernel_bounds.py (reference backend) and triton_cases_bounds.py (Triton under the
interpreter) feed each backend's kernel functions, which must refuse every lie with a
BackendError before computing. Shapes are tiny and satisfy the Triton kernels' own limits
(K and group sizes multiples of 32, head dims powers of two >= 16, Hadamard n = 256), so
the only thing wrong with a lie is the lie."""
import torch

from qpass import formats


def _w4(spec, N=40, K=64):
    torch.manual_seed(0)
    return formats.QuantizedWeight.from_float(torch.randn(N, K), spec)


def valid(op: str) -> dict:
    """Arguments (in the kernel's positional order, which is the op's up to its `backend`) of
    one valid call of `op`."""
    torch.manual_seed(1)
    N, K = 40, 64
    if op == "linear_w4a16":
        qw = _w4("int4:g32:asym")
        return dict(x=torch.randn(3, K), qweight=qw.packed, scales=qw.scale.contiguous(),
                    zeros=qw.zero.contiguous(), bits=4, group_size=32, bias=torch.randn(N))
    if op == "linear_w8a8":
        q8 = _w4("int8:channel")
        return dict(x=torch.randn(3, K), w_int8=formats.to_signed(q8.codes(), 8),
                    w_scales=q8.scale, bias=torch.randn(N))
    if op in ("linear_w4a8", "linear_w4a4"):
        qw = _w4("int4:g32:sym")
        return dict(x=torch.randn(3, K), qweight=qw.packed, w_scales=qw.scale, bias=torch.randn(N),
                    group_size=32)
    if op == "linear_int_codes":
        qw = _w4("int4:g32:sym")
        xq, xs = formats.quantize_per_token(torch.randn(3, K), 8)
        return dict(xq=xq, xs=xs, qweight=qw.packed, w_scales=qw.scale, bias=torch.randn(N),
                    w_bits=4, group_size=32, out_dtype=torch.float32)
    if op == "linear_fp8":
        from qpass.formats.float_linear import fp8_kernel_scales
        q8 = _w4("fp8:g32")
        sc, g = fp8_kernel_scales(q8.scale, q8.spec, N, K)
        return dict(x=torch.randn(3, K), w_fp8=q8.codes(), w_scales=sc,
                    x_scale=torch.full((1, 1), 0.01), bias=torch.randn(N), group_size=g)
    if op == "linear_fp4a16":
        q4 = _w4("nvfp4")
        return dict(x=torch.randn(3, K), qweight=q4.packed, scales=q4.scale,
                    global_scale=q4.global_scale, bias=torch.randn(N), block=16,
                    scale_format="e4m3")
    if op == "quant_per_token":
        return dict(x=torch.randn(3, 256), bits=8, use_hadamard=True, signs=torch.ones(256))
    if op == "rmsnorm_quant":
        return dict(x=torch.randn(3, K), weight=torch.rand(K) + 0.5, eps=1e-5, bits=8, grid="full")
    if op == "silu_mul_quant":
        return dict(gate=torch.randn(3, K), up=torch.randn(3, K), bits=8, grid="full")
    if op == "hadamard":
        return dict(x=torch.randn(3, 256), signs=torch.ones(256))
    if op == "attention":
        return dict(q=torch.randn(1, 4, 5, 16), k=torch.randn(1, 2, 7, 16),
                    v=torch.randn(1, 2, 7, 16), key_mask=torch.ones(1, 7, dtype=torch.bool),
                    causal=False, int8=False)
    if op == "attention_kv":
        kc, ks = formats.quantize_per_token(torch.randn(1, 2, 7, 16), 8)
        vc, vs = formats.quantize_per_token(torch.randn(1, 2, 7, 16), 8)
        return dict(q=torch.randn(1, 4, 5, 16), k_codes=kc, k_scales=ks, v_codes=vc, v_scales=vs,
                    key_mask=torch.ones(1, 7, dtype=torch.bool))
    raise KeyError(op)


def _short(t):
    return t.reshape(-1)[:1].clone()


# name -> (op, {argument: lying value or function of the valid value}, what the error names)
LIES = {
    "w4a16-short-bias": ("linear_w4a16", {"bias": _short}, "bias"),
    "w4a16-scales-1x1": ("linear_w4a16", {"scales": lambda s: s[:1, :1].clone()}, "scales"),
    "w4a16-scales-one-group-short": ("linear_w4a16", {"scales": lambda s: s[:, :1].clone()},
                                     "scales"),
    "w4a16-zeros-transposed": ("linear_w4a16", {"zeros": lambda z: z.t().contiguous()}, "zeros"),
    "w4a16-qweight-int64": ("linear_w4a16", {"qweight": lambda q: q.to(torch.int64)}, "qweight"),
    "w4a16-qweight-short-rows": ("linear_w4a16", {"qweight": lambda q: q[:, :-1].contiguous()},
                                 "qweight"),
    "w4a16-group-not-dividing": ("linear_w4a16", {"group_size": 48}, "group_size"),
    "w4a16-bits-9": ("linear_w4a16", {"bits": 9}, "bits"),
    "w8a8-weight-transposed": ("linear_w8a8", {"w_int8": lambda w: w.t().contiguous()}, "weight"),
    "w8a8-weight-int32": ("linear_w8a8", {"w_int8": lambda w: w.to(torch.int32)}, "weight"),
    "w8a8-scales-two-per-row": ("linear_w8a8", {"w_scales": lambda s: s.repeat(1, 2)},
                                "w_scales"),
    "w8a8-short-bias": ("linear_w8a8", {"bias": _short}, "bias"),
    "w4a8-scales-per-channel-for-groups": ("linear_w4a8", {"w_scales": lambda s: s[:, :1]},
                                           "w_scales"),
    "w4a4-short-bias": ("linear_w4a4", {"bias": _short}, "bias"),
    "int-codes-short-scales": ("linear_int_codes", {"xs": lambda s: s[:1].clone()},
                               "activation scales"),
    "int-codes-weight-bits": ("linear_int_codes", {"w_bits": 5}, "w_bits"),
    "int-codes-float-codes": ("linear_int_codes", {"xq": lambda q: q.float()},
                              "activation codes"),
    "fp8-codes-int8": ("linear_fp8", {"w_fp8": lambda w: w.view(torch.int8)}, "fp8 weight"),
    "fp8-codes-short-rows": ("linear_fp8", {"w_fp8": lambda w: w[:, :32].contiguous()},
                             "fp8 weight"),
    "fp8-scales-per-row-for-groups": ("linear_fp8", {"w_scales": lambda s: s[:, :1].contiguous()},
                                      "w_scales"),
    "fp8-static-scale-per-row": ("linear_fp8", {"x_scale": lambda s: s.repeat(3, 1)}, "x_scale"),
    "fp4-scales-float": ("linear_fp4a16", {"scales": lambda s: s.float()}, "scales"),
    "fp4-scales-transposed": ("linear_fp4a16", {"scales": lambda s: s.t().contiguous()},
                              "scales"),
    "fp4-no-global-scale": ("linear_fp4a16", {"global_scale": None}, "global_scale"),
    "fp4-block-32-with-e4m3": ("linear_fp4a16", {"block": 32}, "block"),
    "fp4-short-bias": ("linear_fp4a16", {"bias": _short}, "bias"),
    "quant-short-signs": ("quant_per_token", {"signs": _short}, "signs"),
    "quant-bits-1": ("quant_per_token", {"bits": 1}, "bits"),
    "rmsnorm-short-weight": ("rmsnorm_quant", {"weight": _short}, "norm weight"),
    "silu-up-shorter": ("silu_mul_quant", {"up": lambda u: u[:, :32].contiguous()}, "up"),
    "hadamard-short-signs": ("hadamard", {"signs": _short}, "signs"),
    "attention-kv-heads-not-dividing": ("attention", {"k": lambda k: k.repeat(1, 2, 1, 1)[:, :3],
                                                      "v": lambda v: v.repeat(1, 2, 1, 1)[:, :3]},
                                        "keys"),
    "attention-v-shorter": ("attention", {"v": lambda v: v[:, :, :3].contiguous()}, "v"),
    "attention-short-mask": ("attention", {"key_mask": lambda m: m[:, :2]}, "key_mask"),
    "attention-k-other-dtype": ("attention", {"k": lambda k: k.half()}, "k"),
    "attention-kv-short-scales": ("attention_kv", {"k_scales": lambda s: s[:, :, :2].contiguous()},
                                  "k_scales"),
    "attention-kv-int32-codes": ("attention_kv", {"v_codes": lambda c: c.to(torch.int32)},
                                 "v_codes"),
}


def lying(name: str) -> tuple[str, list, str]:
    """(op, positional arguments with the lie, what the error names)."""
    op, change, named = LIES[name]
    args = valid(op)
    for k, v in change.items():
        args[k] = v(args[k]) if callable(v) else v
    return op, list(args.values()), named
