"""Makes `lm_eval --model qpass` work without an import: lm-eval 0.4 has no plugin entry
points, so qpass installs `qpass-lm-eval.pth`, which imports this module at interpreter start.

It must stay cheap (it runs in every Python process of the environment): it imports neither
qpass nor lm_eval, only adds a finder that, right after lm-eval's own `lm_eval.models` module
has registered its models, registers "qpass" as a lazy placeholder
("qpass.eval.lm_eval:QpassLM"), so qpass and torch are imported only when that model is used."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "lm_eval.models"
_PLACEHOLDER = "qpass.eval.lm_eval:QpassLM"


class _RegisterAfterExec(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        from lm_eval.api.registry import model_registry
        if "qpass" not in model_registry:
            model_registry.register("qpass", target=_PLACEHOLDER)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
