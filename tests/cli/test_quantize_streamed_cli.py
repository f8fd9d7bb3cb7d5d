"""`qpass quantize CKPT_DIR` streams stage by stage through the same `Pipeline.run` call as an
in-memory model (DESIGN §12) and writes the same checkpoint: equal logits, bit for bit."""
import torch

import qpass
from qpass.cli import main


def test_streamed_and_in_memory_quantize_agree(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    qpass.models.save_checkpoint(qpass.models.load("tiny-llada"), ckpt)
    args = ["--pipeline", "w4a16-rtn", "--quiet"]
    assert main(["quantize", str(ckpt), "--out", str(tmp_path / "streamed"), *args]) == 0
    err = capsys.readouterr().err
    assert "streamed stage by stage" in err and "42 quantized linears" in err
    assert main(["quantize", "tiny-llada", "--out", str(tmp_path / "memory"), *args]) == 0
    assert "kernels here: " in capsys.readouterr().err
    a, b = (qpass.load_compiled(tmp_path / d) for d in ("streamed", "memory"))
    ids = torch.tensor([a.tokenizer.encode("ROMEO:\nBut soft, what light")])
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
