"""One-off GPU check: Triton per-token quantizer vs formats.quantize_per_token on CUDA."""
import json

import torch

import qpass.backends.op_schemas  # noqa: F401
from qpass import formats

res = {}
torch.manual_seed(0)
for M, K in ((37, 4096), (256, 4096), (64, 12288), (8, 768)):
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = (torch.randn(M, K, device="cuda") * torch.rand(1, K, device="cuda") * 5).to(dt)
        q_t, s_t = torch.ops.qpass.quant_per_token(x, 8, False, None, "triton")
        q_r, s_r = formats.quantize_per_token(x, 8)
        res[f"{M}x{K}/{str(dt)[6:]}"] = {"code_mismatches": int((q_t.reshape(q_r.shape) != q_r).sum()),
                                          "scale_max_rel": float(((s_t.reshape(s_r.shape) - s_r).abs() / s_r).max())}
print(json.dumps(res))
