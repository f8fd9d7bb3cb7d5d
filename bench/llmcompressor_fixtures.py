"""Write the llm-compressor checkpoints of tests/fixtures/llmcompressor/ (issue 28 item 5).

    VENV_BENCH/bin/python bench/llmcompressor_fixtures.py tests/fixtures/llmcompressor

Runs in the bench venv (llm-compressor 0.14.0.1 on torch 2.13.0 CPU; imports nothing from
qpass). One tiny random LlamaForCausalLM (hidden 64, 2 layers, GQA 4/2, MLP 128, vocabulary
128 of a character tokenizer, untied head, bfloat16 weights as published checkpoints are) is
quantized by llm-compressor's own `oneshot` with each of its preset schemes FP8_DYNAMIC,
NVFP4A16 and NVFP4 (W4A4: static input global scales calibrated on the calibration ids
below), `lm_head` ignored as llm-compressor's examples do, and saved compressed with
llm-compressor's save_pretrained (save_compressed=True): float-quantized and
nvfp4-pack-quantized folders as llm-compressor writes them for any model (the FP model they
start from is a temporary folder: the quantized folders hold everything the tests compare).
Everything is seeded; the same versions write the same bytes. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

SCHEMES = ("FP8_DYNAMIC", "NVFP4A16", "NVFP4")
VOCAB, N_CALIB, CALIB_LEN = 128, 16, 32
SPECIALS = ("<unk>", "<s>", "</s>")


def char_tokenizer():
    """A character tokenizer (ids 0-2 specials, 3.. printable ASCII; BPE without merges), so
    oneshot finds a processor and the folders load wherever a tokenizer is wanted."""
    import tokenizers
    import transformers
    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(chr(c) for c in range(32, 127)))}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, [], unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")


def tiny_llama():
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=None, initializer_range=0.1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():            # norm gains away from 1, so the fused paths are exercised
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape))
    return model.to(torch.bfloat16)


def calibration():
    import datasets
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 3 + 95, (N_CALIB, CALIB_LEN), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(),
                                       "attention_mask": torch.ones_like(ids).tolist()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path,
                    help="folder for one folder per scheme (fp8_dynamic, nvfp4a16, nvfp4)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import compressed_tensors
    import llmcompressor
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    a.out.mkdir(parents=True, exist_ok=True)
    fp_dir = Path(tempfile.mkdtemp()) / "fp"
    tiny_llama().save_pretrained(fp_dir)
    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(fp_dir)
    made = {}
    for scheme in a.schemes.split(","):
        model = transformers.AutoModelForCausalLM.from_pretrained(fp_dir, dtype=torch.bfloat16)
        oneshot(model=model, processor=tokenizer, dataset=calibration(), max_seq_length=CALIB_LEN,
                num_calibration_samples=N_CALIB, shuffle_calibration_samples=False,
                recipe=[QuantizationModifier(scheme=scheme, targets="Linear",
                                             ignore=["lm_head"])])
        d = a.out / scheme.lower()
        if d.exists():
            shutil.rmtree(d)
        model.save_pretrained(d, save_compressed=True)
        tokenizer.save_pretrained(d)
        made[scheme] = sorted(p.name for p in d.iterdir())
    shutil.rmtree(fp_dir.parent)
    print(json.dumps({"llmcompressor": llmcompressor.__version__,
                      "compressed_tensors": compressed_tensors.__version__,
                      "transformers": transformers.__version__, "torch": torch.__version__,
                      "folders": made}, indent=1))
    return 0


if __name__ == "__main__":
    # bench/kernels.py would shadow the `kernels` package transformers looks for
    here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main())
