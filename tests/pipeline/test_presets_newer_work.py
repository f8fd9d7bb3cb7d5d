"""The presets added for the comparison with newer work: 2-bit weight-only GPTQ and plain AWQ
at W4A4 quantize what their names say (checked on the quantized modules, not the names)."""
import torch

import qpass
from qpass import presets
from qpass.calibration import build_calibration


def _run(name):
    m = qpass.models.load("tiny-dream")
    pipe = presets.get(name)
    out = pipe.run(m, build_calibration(pipe, m, 4, 64), verify=False, progress=False)
    mods = {n: out.gm.get_submodule(n) for n in out.quantized_linears()}
    return m, out, mods


def test_w2a16_gptq_is_two_bit_weight_only():
    m, out, mods = _run("w2a16-gptq")
    assert len(mods) == 7 * m.config.n_layers                  # every block linear, no head
    for mod in mods.values():
        assert mod.weight_spec.bits == 2 and mod.weight_spec.group_size == 128  # divides K
        assert mod.act_spec is None
        # at most 4 distinct values in each group of a row: 2-bit codes (4-bit would give 16)
        groups = mod.dequantized_weight().reshape(-1, 128)
        assert max(len(torch.unique(r)) for r in groups) <= 4


def test_w4a4_awq_quantizes_weights_and_activations_to_four_bits():
    m, out, mods = _run("w4a4-awq")
    assert len(mods) == 7 * m.config.n_layers
    for mod in mods.values():
        assert mod.weight_spec.bits == 4 and mod.act_spec.bits == 4 and mod.act_spec.dynamic
    x = torch.tensor([m.tokenizer.encode("ROMEO:\nWhat")])
    with torch.no_grad():
        assert torch.isfinite(out(x)).all()
