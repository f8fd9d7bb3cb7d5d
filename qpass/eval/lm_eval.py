"""lm-evaluation-harness adapter: `lm_eval --model qpass --model_args pretrained=DIR_OR_ZOO,...`.

Importing this module registers the class with lm-eval as "qpass"; the command line needs no
import because qpass installs a hook (qpass_lm_eval_hook.py) that registers it lazily. Any denoiser
works: a zoo name or HF checkpoint dir (FP), a compiled/lowered checkpoint dir, or an
in-memory model passed as `QpassLM(model=...)`.

- loglikelihood: the model family's own estimator (qpass.eval.family_likelihood: LLaDA's
  stratified mask counts, or Dream's antithetic times with shifted logits and EOS appended),
  mc_num draws, optional CFG. Context/continuation are split as lm-eval's HF model does
  (trailing spaces of the context move to the continuation; BOS prepended for Dream when the
  tokenizer has one). `greedy=True` also answers is_greedy by filling the continuation with
  the family's sampler (one token per step, as LLaDA's suffix_greedy_prediction); otherwise
  is_greedy is False (the reference classes' MC path does not compute it either for Dream).
- loglikelihood_rolling: −(masked-diffusion negative ELBO) of the whole text, qpass.eval.elbo.
- generate_until: the family's sampler, batched with left padding, cut at the stop strings and
  at EOS; with --apply_chat_template the tokenizer's own chat template is used."""
from __future__ import annotations

import logging

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ..errors import QpassError
from ..runtime.loading import load_any
from ..sampling import generate
from ..sampling.common import decode_text, encode_text, special_ids
from .elbo import elbo_ppl
from .family_likelihood import family_loglikelihood, family_of


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _opt_int(value):
    return None if value in (None, "", "None") else int(value)


def _device(requested) -> str:
    """lm-eval's command line passes device=cuda by default; on a machine without CUDA that
    falls back to the CPU (as lm-eval's HF model does), with a warning."""
    import torch
    if requested is None:
        return "cpu"
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("qpass").warning("device %s requested but CUDA is not available; "
                                           "running on the CPU", requested)
        return "cpu"
    return str(requested)


@register_model("qpass")
class QpassLM(LM):
    """model_args win over lm-eval's own --device/--batch_size where both are given (lm-eval
    would otherwise refuse `--model_args device=cpu` next to its default --device)."""

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        from lm_eval.utils import simple_parse_args_string
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def __init__(self, pretrained=None, model=None, device: str = "cpu", dtype=None,
                 mc_num: int = 128, batch_size=32, cfg: float = 0.0, seed: int = 0,
                 estimator: str = "auto", steps=None, gen_length=None, block_length=None,
                 remasking: str = "low_confidence", alg: str = "entropy",
                 temperature: float = 0.0, elbo_mc: int = 8, greedy=False, max_length=None,
                 **unused):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise QpassError("give exactly one of pretrained=ZOO_NAME_OR_DIR or model=")
        extra = sorted(k for k in unused if k not in ("max_batch_size",))
        if extra:
            raise QpassError(f"unknown qpass model_args {extra}; known: pretrained, device, dtype, "
                             "mc_num, batch_size, cfg, seed, estimator, steps, gen_length, "
                             "block_length, remasking, alg, temperature, elbo_mc, greedy, "
                             "max_length")
        self.model = (load_any(pretrained, device=_device(device), dtype=dtype)
                      if model is None else model)
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.tokenizer = getattr(self.model, "tokenizer", None)
        if self.tokenizer is None:
            raise QpassError("the model has no tokenizer; lm-eval works on text, so load a "
                             "checkpoint that ships one")
        self.family = family_of(self.model) if estimator == "auto" else estimator
        self.mc_num, self.cfg, self.seed = int(mc_num), float(cfg), int(seed)
        self.batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
        self.steps, self.gen_length = _opt_int(steps), _opt_int(gen_length)
        self.block_length = _opt_int(block_length)
        self.remasking, self.alg, self.temperature = remasking, alg, float(temperature)
        self.elbo_mc, self.greedy = int(elbo_mc), _flag(greedy)
        cfg_len = getattr(getattr(self.model, "config", None), "max_seq_len", None)
        self.max_length = _opt_int(max_length) or cfg_len or 2048
        self.ids = special_ids(self.model)

    # ---- tokenization --------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        bos = getattr(self.tokenizer, "bos_token", None) if self.family == "dream" else None
        if bos:
            context = bos + context
        whole, ctx = self._encode(context + continuation), self._encode(context)
        cont = whole[len(ctx):]
        # Left-truncate the context so that context + continuation (+ EOS) fits.
        room = self.max_length - len(cont) - (1 if self.family == "dream" else 0)
        if room < 1:
            raise QpassError(f"a continuation of {len(cont)} tokens does not fit max_length "
                             f"{self.max_length}")
        return whole[:len(ctx)][-room:], cont

    # ---- lm-eval API ---------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, continuation = req.args
            prefix, target = self._encode_pair(context, continuation)
            ll = family_loglikelihood(self.model, prefix, target, estimator=self.family,
                                      mc_num=self.mc_num, batch_size=self.batch_size,
                                      cfg=self.cfg, seed=self.seed)
            out.append((ll, self._is_greedy(prefix, target) if self.greedy else False))
        return out

    def _is_greedy(self, prefix: list[int], target: list[int]) -> bool:
        """Does the family's sampler, one token per step at temperature 0, write the target?"""
        n = len(target)
        kw = dict(gen_length=n, steps=n, seed=self.seed)
        if self.family == "llada":
            kw.update(block_length=n, remasking="low_confidence")
        out = generate(self.model, [prefix], sampler=self.family, **kw)
        return out[0, len(prefix):].tolist() == list(target)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            (text,) = req.args
            ids = self._encode(text)
            if len(ids) < 2:
                out.append(0.0)
                continue
            r = elbo_ppl(self.model, [ids], seq_len=min(self.max_length, len(ids)),
                         n_mc=self.elbo_mc, batch_size=self.batch_size, seed=self.seed)
            out.append(-r.nll_per_token * r.n_tokens)
        return out

    def _gen_settings(self, gen_kwargs: dict) -> dict:
        n = self.gen_length or int(gen_kwargs.get("max_gen_toks", 256))
        kw = dict(gen_length=n, steps=self.steps or n, seed=self.seed)
        if self.family == "llada":
            kw.update(block_length=self.block_length or n, remasking=self.remasking,
                      temperature=self.temperature, cfg_scale=self.cfg)
        else:
            kw.update(alg=self.alg, temperature=self.temperature)
        return kw

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one sampler call per distinct gen_kwargs
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for idx in groups.values():
            gen_kwargs = dict(requests[idx[0]].args[1])
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            kw = self._gen_settings(gen_kwargs)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                room = self.max_length - kw["gen_length"]
                if room < 1:
                    raise QpassError(f"gen_length {kw['gen_length']} leaves no room for a prompt "
                                     f"in max_length {self.max_length}")
                prompts = [self._encode(requests[i].args[0])[-room:] for i in chunk]
                ids = generate(self.model, prompts, sampler=self.family, **kw)
                width = max(len(p) for p in prompts)
                for i, row in zip(chunk, ids[:, width:].tolist()):
                    if self.ids.eos is not None and self.ids.eos in row:
                        row = row[:row.index(self.ids.eos)]
                    out[i] = self._cut(decode_text(self.tokenizer, row), until)
        return out

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text[:text.index(stop)]
        return text

    # ---- chat templates ------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__))

    def chat_template(self, chat_template=False):
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise QpassError("--apply_chat_template: this model's tokenizer has no chat "
                             "template; run without it")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

