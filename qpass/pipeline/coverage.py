"""The coverage table (DESIGN §2): every linear of a graph is quantized, kept in high precision
by a named rule, or uncovered — and uncovered is an error unless explicitly allowed.

`coverage(g, scheme)` works on any QGraph, including meta-device graphs of 8B models: linears
that a pass already quantized are read from their modules, the rest are planned from the
scheme (`Scheme.spec_for`), so the table of `llada-8b` can be built without any compute."""
from __future__ import annotations

from ..errors import PipelineError, SpecError
from ..ir.qlinear import is_quantized_module
from ..runtime.report import CoverageRow
from ..specs import Scheme
from .group_fit import scheme_fitted_to


def _s(spec) -> str | None:
    return None if spec is None else str(spec)


def coverage(g, scheme=None, planned: bool = True) -> list[CoverageRow]:
    """One row per linear (and head) node of `g`, in graph order.

    planned=True: linears not yet quantized that the scheme would quantize count as
    "quantized" (reason starts with "planned"), unless their shape does not fit the spec
    (then "uncovered" with the SpecError text). planned=False (after a run): such a linear is
    "uncovered" — the scheme wanted it quantized but no pass did."""
    scheme = None if scheme is None else scheme_fitted_to(g, scheme)
    rows = []
    for node in g.linears(include_head=True):
        role = node.meta.get("qpass", {}).get("role")
        m = g.module(node)
        if is_quantized_module(m):
            reason = node.meta.get("qpass", {}).get("quant_reason", "quantized by a pass")
            rows.append(CoverageRow(node.target, role, "quantized", _s(getattr(m, "weight_spec", None)),
                                    _s(getattr(m, "act_spec", None)), reason))
            continue
        if scheme is None:
            rows.append(CoverageRow(node.target, role, "uncovered", None, None,
                                    "no quantizing pass or scheme covers it"))
            continue
        try:
            w, a, reason = scheme.specs_for(node.target, role, int(m.in_features))
        except SpecError as e:                           # strict_groups: the group does not fit
            w, a, _ = scheme.spec_for(node.target, role)
            rows.append(CoverageRow(node.target, role, "uncovered", _s(w), _s(a), str(e)))
            continue
        if w is None and a is None:
            rows.append(CoverageRow(node.target, role, "kept", None, None, reason))
        elif not planned:
            rows.append(CoverageRow(node.target, role, "uncovered", _s(w), _s(a),
                                    f"{reason} asks for it, but no pass quantized it"))
        else:
            rows.append(CoverageRow(node.target, role, "quantized", _s(w), _s(a),
                                    f"planned: {reason}"))
    return rows


def check_coverage(rows: list[CoverageRow], allow_uncovered: bool = False) -> None:
    bad = [r for r in rows if r.status == "uncovered"]
    if bad and not allow_uncovered:
        names = ", ".join(r.name for r in bad[:6]) + (" …" if len(bad) > 6 else "")
        raise PipelineError(f"{len(bad)} linear(s) are uncovered (neither quantized nor kept by a "
                            f"rule): {names}. First reason: {bad[0].reason}. Add a scheme override "
                            f"(pattern -> spec or None) or pass allow_uncovered=True")
