"""`qpass quantize`'s scheme flags, as llm-compressor (scheme="W4A16", ignore=[...]), GPTQModel
(bits=4, group_size=128) and torchao users write them, and how they compose with --pipeline:
the preset or recipe gives the passes, the flags change its scheme (Pipeline.with_scheme);
without --pipeline the passes are GPTQ's (qpass.presets.for_scheme). A conflict is argparse's
one usage line, a pattern that matches nothing one error line, both before any compute."""
from __future__ import annotations

import fnmatch
from dataclasses import replace

from qpass.errors import PipelineError

from .args import group_size, weight_bits

DEFAULT_SCHEME = "w4a16"        # --bits / --group-size / --ignore alone: GPTQModel's 4-bit g128

HELP = """scheme flags (they change the scheme of --pipeline; without --pipeline they run GPTQ, as
llm-compressor's GPTQModifier and GPTQModel do: the w4a16-gptq passes, or w8a8-gptq's when the
scheme quantizes activations; for round-to-nearest add --pipeline w4a16-rtn):
  qpass quantize tiny-llada --scheme w4a16 --out w4/                 # GPTQ, int4 g128
  qpass quantize tiny-llada --bits 4 --group-size 32 --out w4g32/    # GPTQModel's knobs
  qpass quantize tiny-llada --pipeline w4a16-rtn --scheme w4a16:g64 --ignore 'blocks.0.*' --out r/
  qpass quantize tiny-llada --pipeline q4_0-gptq --out q4/           # then: qpass export q4/ --format gguf
`qpass schemes` lists the scheme names, `qpass presets` the pipelines."""


def add_scheme_args(p) -> None:
    g = p.add_argument_group("scheme (changes --pipeline's; without --pipeline: GPTQ)")
    g.add_argument("--scheme", metavar="SCHEME",
                   help="a scheme name (w4a16, w8a8, w4a4, q4_0, …: `qpass schemes`), with "
                        "optional weight spec tokens (w4a16:g64, w4a8:g128:asym), or a weight "
                        "spec (int4:g32:sym:f16scale)")
    g.add_argument("--bits", type=weight_bits, metavar="N",
                   help=f"weight bits of the pipeline's scheme ({DEFAULT_SCHEME} without "
                        f"--pipeline); not with --scheme, which names its bits")
    g.add_argument("--group-size", type=group_size, metavar="G",
                   help="weight group size (-1: one scale per output channel, GPTQModel's "
                        "group_size=-1)")
    g.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="keep the linears it matches in float (repeatable): a glob on module "
                        "names as `qpass inspect MODEL` shows them ('blocks.0.*', "
                        "'*.down_proj') or role:<role> ('role:linear'); the LM head, "
                        "embeddings and MoE routers stay in float by default")


def given(args) -> bool:
    return (args.scheme is not None or args.bits is not None or args.group_size is not None
            or bool(args.ignore))


def check_conflicts(args, parser) -> None:
    """Argparse's usage error (exit 2) for flags that contradict each other."""
    if args.scheme is not None and args.bits is not None:
        parser.error(f"--bits {args.bits} with --scheme {args.scheme}: the scheme names its weight "
                     f"bits; drop --bits or write them in the scheme (e.g. --scheme "
                     f"w{args.bits}a16, or int{args.bits}:g128:sym)")
    if args.pipeline is None and not given(args):
        parser.error("give --pipeline PRESET (`qpass presets` lists them) or a scheme "
                     "(--scheme, --bits, --group-size)")


def pipeline(args, resolve):
    """The pipeline --pipeline (`resolve`d: preset or recipe) and the scheme flags describe."""
    from qpass import presets
    pipe = resolve(args.pipeline) if args.pipeline is not None else None
    if not given(args):
        return pipe
    base = pipe.scheme() if pipe is not None else None
    scheme = scheme_of(args, base)
    return presets.for_scheme(scheme) if pipe is None else pipe.with_scheme(scheme)


def scheme_of(args, base=None):
    """--scheme (else `base`, the pipeline's, else DEFAULT_SCHEME) with --bits, --group-size
    and --ignore applied; a changed weight spec renames the scheme w<bits>a<bits>[g<size>]."""
    from qpass.errors import SpecError
    from qpass.specs import Scheme
    scheme = Scheme.parse(args.scheme if args.scheme is not None else base or DEFAULT_SCHEME)
    w = scheme.weight
    if (args.bits is not None or args.group_size is not None) and w is None:
        raise SpecError(f"scheme {scheme.name} quantizes no weights; --bits and --group-size "
                        f"change a weight spec")
    if args.bits is not None:
        w = replace(w, bits=args.bits)
    if args.group_size is not None:
        w = replace(w, granularity="group", group_size=args.group_size) if args.group_size > 0 \
            else replace(w, granularity="channel", group_size=None)
    name = scheme.name
    if w != scheme.weight:
        a = scheme.act.bits if scheme.act is not None else 16
        name = (f"w{w.bits}a{a}" + (f"g{w.group_size}" if w.granularity == "group" else "")
                + (f"kv{scheme.attn.bits}" if scheme.attn is not None else ""))
    overrides = scheme.overrides + tuple((pattern, None) for pattern in args.ignore)
    return replace(scheme, name=name, weight=w, overrides=overrides)


def check_ignore(patterns, model, model_name) -> None:
    """Each --ignore pattern matches a linear of `model` (a typo would quantize what the user
    meant to keep): one error naming how the linears are named."""
    import torch

    from qpass.ir.roles import ROLES
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for pattern in patterns:
        if pattern.startswith("role:"):
            if not fnmatch.filter(ROLES, pattern[5:]):
                raise PipelineError(f"--ignore {pattern!r}: no such role; roles: "
                                    f"{', '.join(ROLES)}")
        elif not fnmatch.filter(linears, pattern):
            raise PipelineError(f"--ignore {pattern!r} matches no linear of {model_name}; its "
                                f"linears are named like {', '.join(linears[:3])} (`qpass "
                                f"inspect {model_name}` lists them), or use role:<role>; the LM "
                                f"head and embeddings stay in float by default")
