"""CompiledDenoiser save/load: identical logits, no pickle, corruption and interrupted saves."""
import json
import pickle

import pytest
import torch

import qpass
from qpass import passes as P


@pytest.fixture(scope="module")
def compiled():
    model = qpass.models.load("tiny-dream-random")
    return qpass.Pipeline([P.FuseNorms(), P.RTN(qpass.Scheme("w4a4g16", "int4:g16:asym",
                                                             "int4:token:dyn"))]).run(model, progress=False)


def _ids(vocab=89):
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(3))


def _no_pickle(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("load_compiled must never unpickle")
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)


def test_save_load_identical_logits(compiled, tmp_path, monkeypatch):
    compiled.save(tmp_path / "ck")
    _no_pickle(monkeypatch)
    again = qpass.load_compiled(tmp_path / "ck")
    ids = _ids()
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        assert torch.equal(again(ids), compiled(ids))
        assert torch.equal(again(ids, mask), compiled(ids, mask))
    assert again.config == compiled.config
    assert again.specs() == compiled.specs()
    assert "specs" not in again.manifest                     # stored once: in the modules
    specs = lambda rep: [(r.name, r.weight_spec, r.act_spec) for r in rep.linears + rep.coverage]  # noqa: E731
    assert specs(again.report) == specs(compiled.report)    # put back from the modules
    assert again.report.to_dict() == compiled.report.to_dict()
    assert set(again.manifest["versions"]) >= {"torch", "qpass", "python"}
    assert [p["name"] for p in again.manifest["pipeline"]] == ["FuseNorms", "RTN"]


def test_tied_head_and_tokenizer_round_trip(tmp_path):
    # no FuseNorms: the head stays tied to the embedding and is stored once
    model = qpass.models.load("tiny-llama-random")
    out = qpass.Pipeline([P.RTN("int8:channel")]).run(model, progress=False)
    out.save(tmp_path / "ck")
    again = qpass.load_compiled(tmp_path / "ck")
    assert again.gm.get_submodule("head").weight is again.gm.get_submodule("embed").weight
    ids = _ids(89)
    assert torch.equal(again(ids), out(ids))
    zoo = qpass.models.load("tiny-llada")
    small = qpass.Pipeline([P.FuseNorms()], verify=False).run(zoo, progress=False)
    small.save(tmp_path / "tok")
    assert qpass.load_compiled(tmp_path / "tok").tokenizer.encode("hi") == zoo.tokenizer.encode("hi")


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "manifest"])
def test_corruption_gives_checkpoint_error(compiled, tmp_path, damage):
    d = compiled.save(tmp_path / "ck")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "missing":
        f.unlink()
    else:
        m = d / "manifest.json"
        m.write_text(m.read_text().replace('"format"', '"formaT"', 1))
    with pytest.raises(qpass.CheckpointError) as e:
        qpass.load_compiled(d)
    assert ("corrupt" in str(e.value)) or ("missing" in str(e.value))


def test_missing_tensor_key_gives_checkpoint_error(compiled, tmp_path):
    from safetensors.torch import load_file, save_file

    from qpass.runtime.checkpoint import sha256
    d = compiled.save(tmp_path / "ck")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["blocks.0.q_proj.scales"]
    save_file(tensors, str(d / "model.safetensors"))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256(d / "model.safetensors")
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "SHA256SUMS").write_text(f"{sha256(d / 'manifest.json')}  manifest.json\n")
    with pytest.raises(qpass.CheckpointError, match="blocks.0.q_proj.scales"):
        qpass.load_compiled(d)


def test_interrupted_save_keeps_earlier_save(compiled, tmp_path, monkeypatch):
    import qpass.runtime.checkpoint as ck
    target = tmp_path / "ck"
    fp = qpass.Pipeline([P.FuseNorms()], verify=False).run(qpass.models.load("tiny-dream-random"),
                                                           progress=False)
    fp.save(target)
    ids = _ids(101)
    want = fp(ids)

    def fail_midway(gm):
        raise RuntimeError("disk full (simulated)")
    monkeypatch.setattr(ck, "graph_to_json", fail_midway)   # after the weights were written
    with pytest.raises(RuntimeError, match="simulated"):
        compiled.save(target)
    monkeypatch.undo()
    assert torch.equal(qpass.load_compiled(target)(ids), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]    # no temporary leftovers
    compiled.save(target)                                           # and a later save replaces it
    assert torch.equal(qpass.load_compiled(target)(ids), compiled(ids))


def test_w4_g128_bytes_ratio_tiny_llada():
    model = qpass.models.load("tiny-llada")
    out = qpass.presets.get("w4a16-rtn").run(model, progress=False)
    quantized = set(out.quantized_linears())
    fp32 = sum(m.weight.numel() * 4 for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n in quantized)
    packed = sum(out.gm.get_submodule(n).weight_nbytes() for n in quantized)
    ratio = packed / fp32
    print(f"\ntiny-llada W4 g128: packed {packed} B vs fp32 {fp32} B = {ratio:.4f}x "
          f"(linear incl. fp head: {out.weight_nbytes()['linear']} B)")
    assert len(quantized) == 6 * 7 and ratio <= 0.14
