"""The package's shape (docs/architecture.md): imports only point down the layers, and no module imports
itself back through another (function-local imports included). Read from the source with ``ast``, so a
violation fails here before it shows as an import error or a slow start-up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "forgetkit"

# The layers, lowest first: a module may import its own layer's modules and any below, never one above.
LAYERS: dict[str, int] = {
    "forgetkit": 0, "forgetkit.errors": 0, "forgetkit.io": 0, "forgetkit.config": 0, "forgetkit.cost": 0,
    "forgetkit.device": 0, "forgetkit.checks": 0, "forgetkit.configs": 0,
    "forgetkit.locks": 0,
    "forgetkit.data": 1, "forgetkit.models": 1, "forgetkit.adapters": 1, "forgetkit.influence": 1,
    "forgetkit.runs": 1,
    "forgetkit.train": 2, "forgetkit.eval": 2,
    "forgetkit.request": 3, "forgetkit.summaries": 3, "forgetkit.registry": 3, "forgetkit.audit": 3,
    "forgetkit.methods": 4, "forgetkit.editors": 4, "forgetkit.exact": 4, "forgetkit.certified": 4,
    "forgetkit.prepare": 4, "forgetkit.incontext": 4,
    "forgetkit.unlearn": 5, "forgetkit.deletion": 5, "forgetkit.bench": 5, "forgetkit.cli": 5, "forgetkit.__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    prefix = module
    while prefix not in LAYERS:
        if "." not in prefix:
            raise KeyError(f"{module}: in no layer of tests/test_architecture.py (add its room to LAYERS)")
        prefix = prefix.rsplit(".", 1)[0]
    return LAYERS[prefix]


def _resolve(target: str) -> str:
    """``forgetkit.a.b`` as the module that holds it: the module itself, or the package/module of a name in it."""
    while target != "forgetkit":
        path = PACKAGE.parent / target.replace(".", "/")
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return target
        target = target.rsplit(".", 1)[0]
    return target


def imports_of(path: Path, module: str | None = None) -> dict[str, int]:
    """Every forgetkit module ``path`` imports (anywhere in the file), with the line of the first import;
    ``module`` names the file (default: its place in the package)."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*stem, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target == "forgetkit" or target.startswith("forgetkit."):
                resolved = _resolve(target)
                if resolved != module:
                    found.setdefault(resolved, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_a_layer():
    for module in graph():
        layer_of(module)


def test_imports_only_point_down():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)}) at line {line}"
              for m, deps in graph().items() for t, line in deps.items() if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = {m: set(deps) for m, deps in graph().items()}
    # A package's __init__ that imports its own modules (to register them) is the package's own business;
    # a module importing its package back is the cycle to catch.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_a_violation(tmp_path):
    """The graph reader finds function-local and relative imports (else the tests above prove nothing)."""
    body = "def f():\n    from forgetkit.bench import runner\n\nfrom . import losses\n"
    probe = tmp_path / "_architecture_probe.py"  # read as if it were in methods/, written outside src/
    probe.write_text(body, encoding="utf-8")
    deps = imports_of(probe, "forgetkit.methods._architecture_probe")
    assert deps == {"forgetkit.bench.runner": 2, "forgetkit.methods.losses": 4}
    assert layer_of("forgetkit.bench.runner") > layer_of("forgetkit.methods._architecture_probe")


@pytest.mark.parametrize("module", ["forgetkit.request", "forgetkit.registry", "forgetkit.unlearn"])
def test_the_request_layer_exists(module):
    assert (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file()
