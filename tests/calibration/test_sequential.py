"""The sequential runner: block-by-block execution equals the full graph; callbacks see each
block with its cached inputs and may replace its linears; NaN/Inf are named; disk offload."""
import pytest
import torch
import torch.nn as nn

import qpass
from qpass.calibration import CalibrationSet
from qpass.calibration.sequential import SequentialRunner, split_stages


def _setup(name="tiny-llada-random", n=5, seq_len=24, masking="diffusion"):
    model = qpass.models.load(name).double()
    vocab = model.config.vocab_size
    mask = model.config.mask_token_id
    masking = masking if mask is not None else "none"     # the LLaMA config has no mask id
    calib = CalibrationSet.from_ids(torch.arange(3000) % (vocab - 3), mask_id=mask, n=n,
                                    seq_len=seq_len, masking=masking)
    return model, qpass.capture(model), calib


@pytest.mark.parametrize("name", ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"])
def test_noop_callback_reproduces_the_full_forward(name, tmp_path):
    model, g, calib = _setup(name)
    seen = []
    for offload in (None, str(tmp_path)):
        runner = SequentialRunner(g, calib, batch_size=2, offload_dir=offload)
        outs = runner.run(lambda stage, r, cache: seen.append(stage.name), keep_outputs=True)
        ref = [model(b[0]) for b in calib.batches(2)]
        assert len(outs) == len(ref) == 3
        for a, b in zip(outs, ref):
            assert (a - b).abs().max().item() <= 1e-10
    assert list(tmp_path.iterdir()) == []          # offloaded batches are cleaned up
    assert seen[:2] == ["block 0", "block 1"]   # the prefix has no linear; the suffix has the head


def test_stages_follow_the_discovered_structure():
    _, g, _ = _setup()
    stages = split_stages(g)
    assert [s.name for s in stages] == ["prefix", "block 0", "block 1", "suffix"]
    assert [len(s.linears) for s in stages] == [0, 7, 7, 1]
    # a block hands only the residual stream to the next stage
    assert [n.name for n in stages[1].live_out] == [g.blocks()[1].input.name]


def test_callback_replacement_feeds_the_next_block():
    """Zeroing block 0's down projection must change what block 1 sees, exactly as in a
    full forward of the edited graph."""
    model, g, calib = _setup()
    block1_inputs = []

    def callback(stage, runner, cache):
        if stage.name == "block 0":
            down = [n for n in stage.linears][-1]
            lin = g.module(down)
            new = nn.Linear(lin.in_features, lin.out_features, bias=False).double()
            nn.init.zeros_(new.weight)
            g.gm.get_submodule(down.target.rsplit(".", 1)[0]).__setattr__(
                down.target.rsplit(".", 1)[1], new)
        if stage.name == "block 1":
            first = stage.linears[0]
            runner.run_stage(stage, cache, watch={first.target: block1_inputs.append},
                             stop_after=first.name)

    outs = SequentialRunner(g, calib, batch_size=5).run(callback, keep_outputs=True)
    ref = g.gm(calib.input_ids)                  # the graph now holds the edit
    assert (outs[0] - ref).abs().max().item() <= 1e-10
    assert len(block1_inputs) == 1 and block1_inputs[0].shape[-1] == model.config.d_model


def test_nan_names_block_and_node():
    _, g, calib = _setup()
    stages = split_stages(g)
    target = stages[2].linears[3]                # a linear inside block 1
    lin = g.module(target)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(qpass.CalibrationError, match=rf"block 1.*{target.name}"):
        SequentialRunner(g, calib, batch_size=5).run(None)


def test_empty_calibration_is_rejected():
    _, g, _ = _setup()
    with pytest.raises(qpass.CalibrationError, match="calibration"):
        SequentialRunner(g, None)
