"""The layers import one way: cli -> analysis / sweep -> engine (plus the
shared leaves harness.errors and harness.finite), and no module-level import
cycle exists, so every module imports alone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FILES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for folder in ("harness", "analysis")
    for p in (ROOT / folder).rglob("*.py")
}
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
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(m) :] + [m])}")
        if m in done:
            return
        path.append(m)
        for n in graph[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)


MAX_LINES = 400  # a module longer than this holds more than one job


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_module_is_long(module):
    lines = len(FILES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by job"


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_private_name_is_imported_across_modules(module):
    """`from a.b import _name` and `a.b._name` reach into another module's
    internals: a name another module needs is public."""
    tree = ast.parse(FILES[module].read_text())
    private = [
        f"{node.module}.{a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if _private(a.name) and node.module in FILES
    ]
    modules = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name in FILES
    }
    modules |= {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if node.module and f"{node.module}.{a.name}" in FILES
    }
    private += [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
        and _private(node.attr)
    ]
    assert not private, f"{module} uses private names of other modules: {sorted(set(private))}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_training_loop_fits_on_one_screen():
    """run_trials reads top to bottom: advance, evaluate, observe, prune, keep."""
    tree = ast.parse(FILES["harness.engine.loop"].read_text())
    run_trials = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_trials")
    body = run_trials.body[1:]  # after the docstring
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 40, f"run_trials' body has {lines} lines (at most 40)"
