"""Static checks of a pass order (DESIGN §3), run before any compute.

Every check works on the declared facts only (`requires`, `provides`, `destroys`,
`changes_weights`, `is_lowering`), so a wrong order fails in milliseconds with a message that
names the pass, the fact and the pass(es) that would provide it."""
from __future__ import annotations

from typing import Iterable, Sequence

import networkx as nx

from qpass.errors import PipelineError
from qpass.pipeline.pass_base import Fact, Pass


def _all_pass_classes(root=Pass) -> list[type]:
    out = []
    for sub in root.__subclasses__():
        out.append(sub)
        out.extend(_all_pass_classes(sub))
    return out


def known_providers(fact: Fact) -> list[str]:
    """Names of every imported Pass class that declares it provides `fact` (for messages)."""
    names = []
    for cls in _all_pass_classes():
        provides = cls.__dict__.get("provides", getattr(cls, "provides", frozenset()))
        if isinstance(provides, (frozenset, set)) and fact in provides and cls.__name__ not in names \
                and not cls.__name__.startswith("_") and not cls.__dict__.get("ABSTRACT", False):
            names.append(cls.__name__)
    return names


def _providers_text(fact: Fact, passes: Sequence[Pass], after: int) -> str:
    later = [f"{p.name} (position {j})" for j, p in enumerate(passes) if j > after and fact in p.provides]
    if later:
        return f"it is provided by {', '.join(later)}, which runs later: move it before"
    known = known_providers(fact)
    if known:
        return f"it is provided by {', '.join(known)}: add one of them before"
    return "no known pass provides it: pass it as an initial fact if it holds already"


def check_order(passes: Sequence[Pass], initial_facts: Iterable[Fact] = ()) -> None:
    """Raise PipelineError if `passes` cannot run in this order; return None otherwise."""
    have: dict[Fact, str] = {Fact(f): "initial facts" for f in initial_facts}
    destroyed: dict[Fact, str] = {}
    lowered_by: str | None = None
    for i, p in enumerate(passes):
        if not isinstance(p, Pass):
            raise PipelineError(f"pipeline item {i} is {type(p).__name__}, not a qpass Pass; build "
                                f"passes like qpass.passes.FuseNorms()")
        where = f"{p.name} (position {i})"
        if lowered_by is not None:
            raise PipelineError(f"{where} runs after the lowering pass {lowered_by}; lowering "
                                f"(fact {Fact.LOWERED}) must be the last pass")
        for f in sorted(p.requires, key=str):
            if f in have:
                continue
            if f in destroyed:
                raise PipelineError(f"{where} requires {f}, but {destroyed[f]} destroyed it; "
                                    f"move {p.name} before {destroyed[f].split(' ')[0]} or "
                                    f"re-establish {f} after it")
            raise PipelineError(f"{where} requires {f}, which no earlier pass provides; "
                                f"{_providers_text(f, passes, i)} {p.name}")
        if p.requires_any and not (p.requires_any & set(have)):
            wanted = " or ".join(sorted(map(str, p.requires_any)))
            raise PipelineError(f"{where} requires {wanted}, which no earlier pass provides; add "
                                f"a quantizing pass (e.g. RTN, GPTQ or ObserveActivations) before "
                                f"{p.name}")
        if Fact.WEIGHTS_QUANTIZED in p.provides and Fact.WEIGHTS_QUANTIZED in have:
            raise PipelineError(f"{where} rounds weights, but {have[Fact.WEIGHTS_QUANTIZED]} "
                                f"already did: a second weight-quantizing pass would find no "
                                f"float linear left; keep one of them")
        if p.changes_weights and Fact.WEIGHTS_QUANTIZED in have:
            raise PipelineError(f"{where} changes weights, but {have[Fact.WEIGHTS_QUANTIZED]} "
                                f"already provided {Fact.WEIGHTS_QUANTIZED}: weight-changing passes "
                                f"(norm fusion, rotation, smoothing) must run before weight "
                                f"rounding; move {p.name} before "
                                f"{have[Fact.WEIGHTS_QUANTIZED].split(' ')[0]}")
        for f in p.destroys:
            have.pop(f, None)
            destroyed[f] = where
        for f in p.provides:
            have[f] = where
            destroyed.pop(f, None)
        if p.is_lowering:
            lowered_by = where
    _check_static_acts_observed(passes)


def _check_static_acts_observed(passes: Sequence[Pass]) -> None:
    """A weight pass whose scheme has a static activation spec (`fp8:tensor`, `nvfp4:tensor`)
    leaves its scale uncalibrated: a later pass must provide ACTS_QUANTIZED (ObserveActivations)."""
    for i, p in enumerate(passes):
        act = getattr(getattr(p, "scheme", None), "act", None)
        if Fact.WEIGHTS_QUANTIZED not in p.provides or act is None or act.dynamic:
            continue
        if not any(Fact.ACTS_QUANTIZED in q.provides for q in passes[i + 1:]):
            raise PipelineError(f"{p.name} (position {i}) sets the static activation spec {act}, "
                                f"whose scale is calibrated: add ObserveActivations() after "
                                f"{p.name}")


def facts_after(passes: Sequence[Pass], initial_facts: Iterable[Fact] = ()) -> frozenset:
    """The facts that hold after `passes` ran in this order on a model with `initial_facts`."""
    have = {Fact(f) for f in initial_facts}
    for p in passes:
        have -= set(p.destroys)
        have |= set(p.provides)
    return frozenset(have)


def auto_order(passes: Sequence[Pass], initial_facts: Iterable[Fact] = ()) -> list[Pass]:
    """A valid order of `passes` by their facts, as close to the given order as possible
    (networkx lexicographic topological sort keyed by the original position)."""
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(passes)))
    for i, a in enumerate(passes):
        for j, b in enumerate(passes):
            if i == j:
                continue
            if a.provides & (b.requires | b.requires_any):   # provider before consumer
                dag.add_edge(i, j)
            if a.requires & b.destroys and not (a.provides & b.destroys):
                dag.add_edge(i, j)                           # use a fact before it is destroyed
            if a.changes_weights and Fact.WEIGHTS_QUANTIZED in b.provides:
                dag.add_edge(i, j)                           # transforms before rounding
            if b.is_lowering and not a.is_lowering:
                dag.add_edge(i, j)                           # lowering last
    try:
        order = list(nx.lexicographical_topological_sort(dag, key=lambda k: k))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dag)
        names = " -> ".join(passes[u].name for u, _ in cycle)
        raise PipelineError(f"the passes' facts contradict each other (cycle {names}); no order "
                            f"satisfies them") from None
    result = [passes[k] for k in order]
    check_order(result, initial_facts)
    return result
