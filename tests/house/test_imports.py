"""The house rule (DESIGN §1): no import cycle among qpass/, passes/, backends/, and nothing
imports a higher layer. Imports are read with ast (lazy imports inside functions included)."""
import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# subsystem -> layer; a file may import its own layer's subsystems or lower ones
LAYERS = {
    "qpass.errors": 0, "qpass.specs": 0, "qpass.formats": 0, "qpass.ops": 0, "qpass.data": 0,
    "qpass.kvcache": 0, "qpass.folders": 0, "qpass.display": 0,
    "qpass.models": 1, "qpass.hadamard": 1, "qpass.ir": 1,
    "qpass.backends": 2,
    "qpass.calibration": 3, "qpass.runtime": 3, "qpass.sandbox": 3,
    "qpass.pipeline": 4,
    "qpass.passes": 5, "qpass.sampling": 5, "qpass.eval": 5, "qpass.inspect": 5,
    "qpass.interop": 5,
    "qpass.study": 6,
    "qpass.cli": 7, "qpass.presets": 7, "qpass.__main__": 7,
}
FACE = "qpass"     # qpass/__init__.py re-exports the public names of every layer


def _module_files():
    for base, pkg in ((ROOT / "qpass", "qpass"), (ROOT / "passes", "qpass.passes"),
                      (ROOT / "backends", "qpass.backends")):
        for f in base.rglob("*.py"):
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg] + parts)
            if pkg == "qpass" and parts and parts[0] == "zoo":
                continue
            yield name, f, f.name == "__init__.py"


def _imports(name, path, is_pkg):
    tree = ast.parse(path.read_text())
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for a in node.names:
                yield f"{mod}.{a.name}"


def _graph():
    files = {n: (f, p) for n, f, p in _module_files()}
    g = nx.DiGraph()
    for name, (f, is_pkg) in files.items():
        g.add_node(name)
        for imp in _imports(name, f, is_pkg):
            if imp in files and imp != name:
                g.add_edge(name, imp)
    return g


def _layer(mod):
    best = None
    for sub, layer in LAYERS.items():
        if (mod == sub or mod.startswith(sub + ".")) and (best is None or len(sub) > len(best[0])):
            best = (sub, layer)
    return best


def test_every_module_has_a_layer():
    missing = [n for n in _graph().nodes if n != FACE and _layer(n) is None]
    assert not missing, f"modules outside every layer of DESIGN §1: {missing}"


def test_no_import_cycles():
    g = _graph()
    g.remove_node(FACE)
    packages = {n for n, _, is_pkg in _module_files() if is_pkg}
    # a package's __init__ re-exporting its own submodules is not a cycle of the house
    for u, v in list(g.edges):
        if v == u.rpartition(".")[0] or u == v.rpartition(".")[0] and u in packages:
            g.remove_edge(u, v)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_nothing_imports_upward():
    bad = []
    for u, v in _graph().edges:
        if FACE in (u, v):
            continue
        lu, lv = _layer(u), _layer(v)
        if lu and lv and lv[1] > lu[1]:
            bad.append(f"{u} (layer {lu[1]}) imports {v} (layer {lv[1]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_private_names_across_packages():
    bad = []
    for name, f, is_pkg in _module_files():
        tree = ast.parse(f.read_text())
        mine = _layer(name)[0] if _layer(name) else name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                theirs = _layer(node.module)
                if theirs and theirs[0] != mine:
                    bad += [f"{name} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_every_package_is_installed():
    """A new subsystem folder is listed in pyproject.toml's packages (a non-editable install
    would leave it out otherwise)."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {n for n, _, is_pkg in _module_files() if is_pkg}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
