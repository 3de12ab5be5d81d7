"""The import boundary of DESIGN §8, pinned (torchtune's ``test_import_recipes.py``).

Commands sit above components: no component imports ``tabom.commands`` or ``tabom.cli``; a
command imports components, never another command's private helpers (``demo`` may use its own
package and the public entry points of ``distill`` / ``train``); the package has no import
cycle; masking and losses import only torch. Imports are read from the source with ``ast``
(function-level imports included), so nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tabom"
MODULES = {
    ".".join(("tabom", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): p
    for p in sorted(SRC.rglob("*.py"))
}
TOP = {"tabom.cli", "tabom.__main__"}


def _is_command(name: str) -> bool:
    return name == "tabom.commands" or name.startswith("tabom.commands.")


def imports(module: str) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every ``tabom`` import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "tabom"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.split(".")[0] != "tabom":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None) if sub in MODULES else (base, a.name))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_the_package():
    assert {"tabom.cli", "tabom.objectives", "tabom.commands.train"} <= set(MODULES)
    assert "tabom.commands.demo.pipeline" in MODULES
    assert ("tabom.objectives", "compute_objective") in imports("tabom.commands.train")
    # the cycle finder finds a planted cycle
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_component_imports_a_command_or_the_cli():
    bad = [
        (m, t)
        for m in MODULES
        if not _is_command(m) and m not in TOP
        for t, _ in imports(m)
        if _is_command(t) or t in TOP
    ]
    assert bad == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_command(m)))
def test_a_command_imports_no_other_commands_helpers(module):
    own = "tabom.commands.demo" if module.startswith("tabom.commands.demo") else module
    for target, name in imports(module):
        if not _is_command(target) or target.startswith(own) or target == "tabom.commands":
            continue
        # demo runs distill and train through their public entry points only
        assert module.startswith("tabom.commands.demo"), (module, target)
        assert name is not None and not name.startswith("_"), (module, target, name)
        assert target in ("tabom.commands.distill", "tabom.commands.train"), (module, target)


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("module", ["tabom.masking", "tabom.losses"])
def test_masking_and_losses_import_only_torch(module):
    tree = ast.parse(MODULES[module].read_text())
    roots = {
        (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    # torch and the standard library's typing helpers only (collections.abc: Callable)
    stdlib = {"__future__", "collections", "dataclasses", "typing", "math"}
    assert roots <= stdlib | {"torch", "tabom"}
    assert {t for t, _ in imports(module)} <= {"tabom.masking"}
