"""The layers import one way: cli -> analysis / sweep -> engine (plus the
shared leaves harness.errors and harness.finite), and no module-level import
cycle exists, so every module imports alone."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FILES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
         for folder in ("harness", "analysis") for p in (ROOT / folder).rglob("*.py")}
# A module of the layer on the left may import from the layers on the right.
ALLOWED = {
    "harness.engine": ("harness.engine",),
    "harness.sweep": ("harness.sweep", "harness.engine"),
    "analysis": ("analysis", "harness.sweep", "harness.engine"),
    "harness.cli": ("harness.cli", "analysis", "harness.sweep", "harness.engine"),
}
LEAVES = ("harness", "harness.errors", "harness.finite")


def layer(module):
    return next((name for name in ALLOWED if module == name or module.startswith(name + ".")), None)


def imports(module, top_level_only=False):
    """The project modules `module` imports (at the top only, or anywhere)."""
    tree = ast.parse(FILES[module].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & set(FILES) - {module}


@pytest.mark.parametrize("module", sorted(m for m in FILES if layer(m)))
def test_imports_run_one_way(module):
    allowed = ALLOWED[layer(module)]
    wrong = sorted(m for m in imports(module) if m not in LEAVES and layer(m) not in allowed)
    assert not wrong, f"{module} imports {wrong}; its layer may import only {allowed}"


def test_no_import_cycle():
    graph = {m: imports(m, top_level_only=True) for m in FILES}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(m):] + [m])}")
        if m in done:
            return
        path.append(m)
        for n in graph[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)
