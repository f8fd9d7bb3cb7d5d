"""An independent float64 forward written from the checkpoint tensors by name, to check the
loaders and the Denoiser against (shares no code with qpass.models)."""
import math

import torch


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    # x: (B, H, L, D), rotate-half convention
    B, H, L, D = x.shape
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attend(q, k, v, causal):
    H, Hk = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // Hk, 1)
    v = v.repeat_interleave(H // Hk, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        L = s.shape[-1]
        s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1) @ v


def forward(t: dict, names: dict, dims: dict, ids: torch.Tensor) -> torch.Tensor:
    """names: embed, norm, head (or None: tied), block(i, part) -> tensor name stem."""
    t = {k: v.double() for k, v in t.items()}
    d, H, Hk, eps, theta = dims["d"], dims["H"], dims["Hk"], dims["eps"], dims["theta"]
    hd = d // H
    x = t[names["embed"]][ids]
    B, L = ids.shape
    for i in range(dims["layers"]):
        n = lambda part: names["block"](i, part)  # noqa: E731
        lin = lambda part, h: h @ t[n(part) + ".weight"].T + (t[n(part) + ".bias"] if n(part) + ".bias" in t else 0)  # noqa: E731
        h = rms(x, t[n("attn_norm") + ".weight"], eps)
        q = lin("q", h).view(B, L, H, hd).transpose(1, 2)
        k = lin("k", h).view(B, L, Hk, hd).transpose(1, 2)
        v = lin("v", h).view(B, L, Hk, hd).transpose(1, 2)
        a = attend(rope(q, theta), rope(k, theta), v, dims["causal"]).transpose(1, 2).reshape(B, L, d)
        x = x + lin("o", a)
        h = rms(x, t[n("mlp_norm") + ".weight"], eps)
        g = lin("gate", h)
        x = x + lin("down", g * torch.sigmoid(g) * lin("up", h))
    x = rms(x, t[names["norm"]], eps)
    head = t[names["head"]] if names["head"] else t[names["embed"]]
    logits = x @ head.T
    if dims["shift"]:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
    return logits
