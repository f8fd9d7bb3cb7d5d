"""DESIGN §11: the public names users, examples and tests rely on, end to end once."""
import torch

import qpass
from qpass import passes as P


def test_design_public_names_end_to_end(tmp_path):
    model = qpass.models.load("tiny-llada")
    meta = qpass.models.load("llada-8b", device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert isinstance(qpass.capture(model), qpass.QGraph)
    texts = ["37+48=85\n12+5=17\n" * 40, "def f(x):\n    return x + 1\n" * 40]
    calib = qpass.calibration.CalibrationSet.from_texts(texts, model.tokenizer, n=4, seq_len=64,
                                                        masking="diffusion", seed=0)
    pipe = qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.GPTQ("int4:g128:sym"),
                           P.ObserveActivations("int4:token:dyn"), P.Lower(backend="auto")])
    out = pipe.run(model, calib, progress=False)
    assert isinstance(out, qpass.CompiledDenoiser) and out.report is not None
    out.save(tmp_path / "w4a4")
    again = qpass.load_compiled(tmp_path / "w4a4")
    prompt = torch.tensor([model.tokenizer.encode("12+5=17\n37+48=")])
    with torch.no_grad():
        assert torch.equal(again(prompt), out(prompt))
    ids = qpass.sampling.generate(again, prompt, gen_length=8, steps=8, block_length=8)
    assert ids.shape == (1, prompt.shape[1] + 8) and (ids != model.config.mask_token_id).all()
    r = qpass.eval.elbo_ppl(again, [texts[0]], seq_len=64, n_mc=1)
    assert r.ppl > 1 and r.stderr >= 0
    assert isinstance(qpass.presets.get("w4a4-quarot"), qpass.Pipeline)
    assert any(b["name"] == "reference" and b["available"] for b in qpass.backends.available())
    W, X = torch.randn(16, 256), torch.randn(300, 256)
    Wq, info = qpass.passes.gptq.quantize_weight(W, X.T @ X, "int4:g128:sym", block_size=128,
                                                 act_order=False)
    assert Wq.shape == W.shape and info.qweight.shape == (16, 256)
    H = qpass.hadamard.matrix(3584)
    assert torch.equal(H @ H.T, 3584 * torch.eye(3584, dtype=H.dtype))
    x = torch.randn(3, 3584, dtype=torch.float64)
    assert torch.allclose(qpass.hadamard.transform(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    for err in ("CaptureError", "PipelineError", "VerificationError", "CheckpointError",
                "CalibrationError"):
        assert issubclass(getattr(qpass, err), qpass.QpassError)
