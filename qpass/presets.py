"""Named pipelines (DESIGN §11), used by `qpass quantize --pipeline NAME` and the study.

Each preset is a zero-argument factory, so `get(name)` always returns fresh pass objects.
To add one, append an entry above the END-OF-PRESETS marker, e.g. (what `_gptq` builds for
the weight-only GPTQ preset; weight-only presets do not fuse norms, see below)
    "w4a16-gptq": lambda: _pipe(P().GPTQ(act_order=True), scheme="w4a16g128"),
"""
from __future__ import annotations

from typing import Callable

from .errors import PipelineError
from .pipeline import Pipeline


def P():
    """qpass.passes, imported lazily (the core never imports passes/ at import time)."""
    from . import passes
    return passes


def _pipe(*passes, scheme: str) -> Pipeline:
    return Pipeline(list(passes), scheme=scheme)


# Weight-only presets do not fuse norms: folding the norm gains into the consumers' columns
# makes column outliers that per-group weight rounding pays for (docs/ARCHITECTURE.md has the
# numbers); rotation needs fused norms, weight-only rounding does not. Their GPTQ uses
# act-order (static groups), measured better on tiny-llada and on a 135M pretrained model.
def _rtn(scheme: str, fuse: bool = True) -> Callable[[], Pipeline]:
    return lambda: _pipe(*([P().FuseNorms()] if fuse else []), P().RTN(), scheme=scheme)


def _gptq(scheme: str, observe: bool) -> Callable[[], Pipeline]:
    if not observe:                                   # weight-only
        return lambda: _pipe(P().GPTQ(act_order=True), scheme=scheme)
    return lambda: _pipe(P().FuseNorms(), P().GPTQ(), P().ObserveActivations(), scheme=scheme)


_ACLIP = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)     # activation clip ratios searched


# Preset names are "<scheme>-<method>": the scheme part is a name of qpass.specs.SCHEMES (the
# table of scheme names → weight/activation specs, docs/FORMATS.md), set once per pipeline;
# a floating-point scheme's name alone (`w8a8-fp8`) is its round-to-nearest preset.
PRESETS: dict[str, Callable[[], Pipeline]] = {
    "w4a16-rtn": _rtn("w4a16g128", fuse=False),
    "w3a16-rtn": _rtn("w3a16g128", fuse=False),
    # no FuseNorms at W8A8 either: per-token int8 activations absorb the norm gains, which
    # folded into the weights' columns cost SmolLM2-135M 46.00 vs 44.94 perplexity (RESULTS)
    "w8a8-rtn": _rtn("w8a8", fuse=False),
    "w4a4-rtn": _rtn("w4a4"),
    # SmoothQuant (α 0.5 as in the study) then RTN with per-token dynamic activations; AWQ
    # only rewrites float weights, so RTN under the same scheme does the rounding. No FuseNorms:
    # the scales fold into the norm weights either way (same model for SmoothQuant), and the
    # reported input ratios then refer to the original model's activations (issue 8)
    "w8a8-smoothquant": lambda: _pipe(P().SmoothQuant(0.5), P().RTN(), scheme="w8a8"),
    "w4a8-smoothquant": lambda: _pipe(P().SmoothQuant(0.5), P().RTN(), scheme="w4a8"),
    "w4a4-smoothquant": lambda: _pipe(P().SmoothQuant(0.5), P().RTN(), scheme="w4a4"),
    "w4a16-awq": lambda: _pipe(P().AWQ(), P().RTN(), scheme="w4a16g128"),
    "w3a16-awq": lambda: _pipe(P().AWQ(), P().RTN(), scheme="w3a16g128"),
    # QuaRot: rotate (exact), GPTQ weights on the rotated graph, per-token dynamic activations
    # (ObserveActivations re-states the spec and records input statistics in the report).
    # DuQuant: smoothing + block rotations + permutation (exact), then RTN as in DuQuant.
    "w4a4-quarot": lambda: _pipe(P().FuseNorms(), P().Rotate(), P().GPTQ(),
                                 P().ObserveActivations(), scheme="w4a4"),
    "w4a8-quarot": lambda: _pipe(P().FuseNorms(), P().Rotate(), P().GPTQ(),
                                 P().ObserveActivations(), scheme="w4a8"),
    "w8a8-quarot": lambda: _pipe(P().FuseNorms(), P().Rotate(), P().GPTQ(),
                                 P().ObserveActivations(), scheme="w8a8"),
    # QuaRot + activation clip ratios searched per linear (1.0 … 0.7, least output error on
    # 256 calibration rows; QuaRot/SpinQuant's a-clip). Measured 2026-12-07 (RESULTS, issue
    # 29; bench/results/aclip_*): SmolLM2-135M next-token ppl 95.59 vs w4a4-quarot 105.38
    # (FP 43.73; one fixed ratio 0.9 gave 93.43 there but 5.570 on tiny-llada); tiny-llada
    # ELBO ppl 5.530 vs w4a4-quarot 5.569 (FP 5.439).
    "w4a4-quarot-aclip": lambda: _pipe(P().FuseNorms(), P().Rotate(), P().GPTQ(),
                                       P().ObserveActivations(clip_search=_ACLIP), scheme="w4a4"),
    # What won by measurement (issue 29; RESULTS "W4A4 that holds", bench/results/
    # w4a4_learned_*): QuaRot's rotation, LearnedAffine's block-wise learned transforms
    # (trained under the scheme's fake quantization with a learnable clip), GPTQ with the
    # least-error weight range (mse observer) and float activations inside a block while it
    # rounds (QuaRot's order), then the a-clip search. SmolLM2-135M next-token ppl (FP 43.73,
    # 16x128 calibration tokens): 73.3 (1.68×) vs w4a4-quarot 105.4 and w4a4-quarot-aclip
    # 95.6 (quantized activations while a block rounds: 72.6 there, and 66.7, 1.53×, with
    # 64x128 tokens). tiny-llada / tiny-dream ELBO ppl, mean of 4 seeds: 5.537 / 9.729 vs
    # QuaRot's 5.604 / 9.731 (FP 5.439 / 9.655; every tiny-llada seed below every QuaRot one).
    "w4a4-learned": lambda: _pipe(P().FuseNorms(), P().Rotate(), P().LearnedAffine(),
                                  P().GPTQ(observer="mse", stage_act_quant=False),
                                  P().ObserveActivations(clip_search=_ACLIP), scheme="w4a4"),
    "w4a4-duquant": lambda: _pipe(P().FuseNorms(), P().DuQuant(), P().RTN(), scheme="w4a4"),
    "w8a8-duquant": lambda: _pipe(P().FuseNorms(), P().DuQuant(), P().RTN(), scheme="w8a8"),
    # GPTQ weights (Hessians from calibration inputs of the fused graph, block by block);
    # weight-activation variants add per-token dynamic activations + input statistics.
    "w4a16-gptq": _gptq("w4a16g128", observe=False),
    "w3a16-gptq": _gptq("w3a16g128", observe=False),
    "w8a8-gptq": _gptq("w8a8", observe=True),
    "w4a8-gptq": _gptq("w4a8", observe=True),
    "w4a4-gptq": _gptq("w4a4", observe=True),
    # GGUF-exact weights (qpass export --format gguf): Q4_0 / Q8_0 blocks with fp16 scales
    "q4_0-rtn": _rtn("q4_0", fuse=False),
    "q4_0-gptq": _gptq("q4_0", observe=False),
    "q8_0-rtn": _rtn("q8_0", fuse=False),
    # Rows for the newer work the study is compared with (docs/RESULTS.md): 2-bit weight-only
    # GPTQ (Quant-dLLM's setting, without its dLLM-specific method) and plain AWQ at W4A4
    # (DLLMQuant's baseline: AWQ's weight scales, then RTN weights and per-token activations).
    "w2a16-gptq": _gptq("w2a16g128", observe=False),
    "w4a4-awq": lambda: _pipe(P().AWQ(), P().RTN(), scheme="w4a4"),
    # Floating-point grids (qpass/specs/float_spec.py). The scheme is the preset's name up to
    # the method; no method means round-to-nearest, as llm-compressor's FP8_DYNAMIC / NVFP4A16 /
    # NVFP4 / MXFP4 presets are. Norms are not fused: per-token float activations and 16/32-
    # element weight blocks take the norm gains in their stride (as w8a8-rtn does).
    "w8a8-fp8": _rtn("w8a8-fp8", fuse=False),
    "w8a16-fp8": _rtn("w8a16-fp8", fuse=False),
    "w4a16-nvfp4": _rtn("w4a16-nvfp4", fuse=False),
    # act-order off: with q/k/v and gate/up sharing one global scale (as engines fuse them),
    # SmolLM2-135M ppl 61.69 vs act-order 63.32 and group 62.62 (llm-compressor's GPTQ
    # NVFP4A16 62.95; RESULTS); tiny-llada 5.656 vs 5.658 (per-linear global scales then)
    "w4a16-nvfp4-gptq": lambda: _pipe(P().GPTQ(act_order=False), scheme="w4a16-nvfp4"),
    "w4a4-nvfp4": _rtn("w4a4-nvfp4", fuse=False),
    # GPTQ at W4A4 NVFP4 without FuseNorms, act-order (tiny-llada ELBO perplexity, FP 5.644:
    # RTN 5.735, this 5.709, with FuseNorms + ObserveActivations as w4a4-gptq 5.747, QuaRot
    # rotation + GPTQ 5.718; bench/float_grid_variants.py)
    "w4a4-nvfp4-gptq": _gptq("w4a4-nvfp4", observe=False),
    "w4a4-mxfp4": _rtn("w4a4-mxfp4", fuse=False),
    # llm-compressor's NVFP4 as it is (exportable as compressed-tensors W4A4): activation global
    # scale calibrated per tensor. tiny-llada ELBO perplexity (FP 5.644): RTN 5.747, GPTQ
    # act-order 5.736, against w4a4-nvfp4's per-token global 5.735, which stays the default
    "w4a4-nvfp4-static": lambda: _pipe(P().RTN(), P().ObserveActivations(),
                                       scheme="w4a4-nvfp4-static"),
    "w4a4-nvfp4-static-gptq": lambda: _pipe(P().GPTQ(act_order=True), P().ObserveActivations(),
                                            scheme="w4a4-nvfp4-static"),
    # llama.cpp's K-quants (GGUF Q4_K / Q6_K; qpass/specs/kquant_spec.py): 256-weight
    # super-blocks; a layer whose K is not a multiple of 256 takes llama.cpp's fallback (q5_0
    # for q4_k, q8_0 for q6_k). q4_k_m is llama-quantize's Q4_K_M mix (q6_k for the attn_v /
    # ffn_down / untied output tensors its rule picks); GPTQ fixes each super-block's scales
    # (searched weighted by diag H, as llama.cpp weighs by its imatrix) and decides the codes
    "q4_k-rtn": _rtn("q4_k", fuse=False),
    "q4_k-gptq": _gptq("q4_k", observe=False),
    "q6_k-rtn": _rtn("q6_k", fuse=False),
    "q4_k_m-rtn": _rtn("q4_k_m", fuse=False),
    "q4_k_m-gptq": _gptq("q4_k_m", observe=False),
    # ---- END-OF-PRESETS: add new presets above this line --------------------------------
}


# What each preset matches: the paper or tool it reproduces (`qpass presets` prints one line
# per preset with its passes and bits; tests/cli/test_first_hour_flags.py: every preset has one).
_STUDY = "the study (arXiv 2508.14896)"
ABOUT: dict[str, str] = {
    "w4a16-rtn": "round-to-nearest; llm-compressor QuantizationModifier W4A16, torchao int4 "
                 "weight-only",
    "w3a16-rtn": "round-to-nearest at 3 bits; " + _STUDY,
    "w8a8-rtn": "round-to-nearest, per-token int8 activations; llm-compressor W8A8 without "
                "SmoothQuant",
    "w4a4-rtn": "round-to-nearest baseline of QuaRot/DuQuant at W4A4; " + _STUDY,
    "w8a8-smoothquant": "SmoothQuant (Xiao et al. 2023), alpha 0.5; llm-compressor "
                        "SmoothQuantModifier + W8A8",
    "w4a8-smoothquant": "SmoothQuant, alpha 0.5, 4-bit weights; " + _STUDY,
    "w4a4-smoothquant": "SmoothQuant, alpha 0.5, at W4A4; " + _STUDY,
    "w4a16-awq": "AWQ (Lin et al. 2024); llm-compressor AWQModifier W4A16, AutoAWQ",
    "w3a16-awq": "AWQ at 3 bits; " + _STUDY,
    "w4a4-quarot": "QuaRot (Ashkboos et al. 2024): Hadamard rotation + GPTQ; " + _STUDY,
    "w4a8-quarot": "QuaRot rotation + GPTQ, 8-bit activations",
    "w8a8-quarot": "QuaRot rotation + GPTQ at W8A8",
    "w4a4-quarot-aclip": "QuaRot + activation clip ratios searched per linear (QuaRot/SpinQuant "
                         "a-clip); clipped activations run on the reference QuantLinear",
    "w4a4-learned": "QuaRot + LearnedAffine (FlatQuant-style learned transforms, block by "
                    "block) + GPTQ with mse weight ranges (float activations while a block "
                    "rounds) + a-clip search; issue 29",
    "w4a4-duquant": "DuQuant (Lin et al. 2024): smoothing + block rotations + zig-zag "
                    "permutation; " + _STUDY,
    "w8a8-duquant": "DuQuant at W8A8; " + _STUDY,
    "w4a16-gptq": "GPTQ (Frantar et al. 2023), act-order; llm-compressor GPTQModifier W4A16, "
                  "GPTQModel bits=4 group_size=128",
    "w3a16-gptq": "GPTQ act-order at 3 bits; GPTQModel bits=3",
    "w8a8-gptq": "GPTQ weights, per-token int8 activations; llm-compressor GPTQModifier W8A8",
    "w4a8-gptq": "GPTQ weights, per-token int8 activations; " + _STUDY,
    "w4a4-gptq": "GPTQ weights, per-token int4 activations; " + _STUDY,
    "q4_0-rtn": "llama.cpp Q4_0 blocks (llama-quantize); exports to GGUF",
    "q4_0-gptq": "GPTQ into llama.cpp Q4_0 blocks; exports to GGUF",
    "q8_0-rtn": "llama.cpp Q8_0 blocks (llama-quantize); exports to GGUF",
    "q4_k-rtn": "llama.cpp Q4_K super-blocks, scales searched as llama-quantize does (and "
                "further); exports to GGUF",
    "q4_k-gptq": "GPTQ into llama.cpp Q4_K super-blocks; exports to GGUF",
    "q6_k-rtn": "llama.cpp Q6_K super-blocks (llama-quantize); exports to GGUF",
    "q4_k_m-rtn": "llama-quantize Q4_K_M: Q4_K with Q6_K for the attn_v / ffn_down / output "
                  "tensors llama.cpp picks; exports to GGUF",
    "q4_k_m-gptq": "GPTQ into llama-quantize's Q4_K_M mix (llama.cpp Q4_K_M + imatrix); "
                   "exports to GGUF",
    "w2a16-gptq": "2-bit GPTQ, Quant-dLLM's setting (without its dLLM-specific method)",
    "w4a4-awq": "AWQ scales then RTN at W4A4: DLLMQuant's AWQ baseline",
    "w8a8-fp8": "FP8 E4M3 per-channel weights + per-token dynamic activations, RTN; "
                "llm-compressor FP8_DYNAMIC",
    "w8a16-fp8": "FP8 E4M3 per-channel weights, RTN; activations unquantized",
    "w4a16-nvfp4": "NVFP4 weights (E4M3 16-block scales, fp32 global), RTN; llm-compressor "
                   "NVFP4A16",
    "w4a16-nvfp4-gptq": "GPTQ inside NVFP4's RTN block scales; llm-compressor GPTQModifier "
                        "NVFP4A16",
    "w4a4-nvfp4": "NVFP4 weights and per-token dynamic NVFP4 activations, RTN; llm-compressor "
                  "NVFP4 (static activation global scale there)",
    "w4a4-nvfp4-gptq": "GPTQ inside NVFP4's block scales, per-token dynamic NVFP4 activations; "
                       "llm-compressor GPTQModifier NVFP4",
    "w4a4-mxfp4": "OCP MXFP4 weights and per-token dynamic activations, RTN; llm-compressor MXFP4",
    "w4a4-nvfp4-static": "NVFP4 weights, NVFP4 activations with a calibrated global scale per "
                         "tensor, RTN; llm-compressor NVFP4 (exports as compressed-tensors W4A4)",
    "w4a4-nvfp4-static-gptq": "GPTQ act-order inside NVFP4's block scales, calibrated activation "
                              "global scale; llm-compressor GPTQModifier NVFP4",
}


def names() -> list[str]:
    return list(PRESETS)


def for_scheme(scheme) -> Pipeline:
    """The pipeline `qpass quantize --scheme S` (or --bits / --group-size / --ignore) runs
    without --pipeline: GPTQ, as llm-compressor's GPTQModifier and GPTQModel quantize, with
    the passes of w4a16-gptq (act-order, norms not fused) for a weight-only scheme and of
    w8a8-gptq (fused norms, per-token activations observed) for one that quantizes
    activations. Round-to-nearest is `--pipeline w4a16-rtn --scheme S`."""
    from .specs import Scheme
    scheme = Scheme.parse(scheme)
    return _gptq(scheme, observe=scheme.act is not None)()


def identify(manifest: dict) -> str | None:
    """The preset whose passes (lowering aside) made the checkpoint `manifest` describes, or
    None (a recipe, or a preset changed by flags)."""
    import json

    from .pipeline.pass_base import PASSES

    def key(entries) -> str:
        return json.dumps([[e.get("name"), e.get("config")] for e in entries
                           if isinstance(e, dict) and not getattr(PASSES.get(e.get("name")),
                                                                  "is_lowering", False)],
                          sort_keys=True, default=str)
    recorded = manifest.get("pipeline")
    if not isinstance(recorded, list):
        return None
    want = key(recorded)
    for name, make in PRESETS.items():
        if key([{"name": p.name, "config": p.config()} for p in make().passes]) == want:
            return name
    return None


def get(name: str) -> Pipeline:
    """A fresh Pipeline for a preset name (PipelineError listing the known names otherwise)."""
    if name not in PRESETS:
        raise PipelineError(f"unknown pipeline preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
