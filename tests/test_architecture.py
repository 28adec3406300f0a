"""The layering docs/architecture.md describes, checked on the source: what each part may import, and no import
circle between spklip's modules. Read with ``ast`` (nothing is imported), so an import anywhere, even inside a
function, counts."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "spklip"

# part -> parts of spklip it must never import (directly, at any level), and third-party packages it must not use.
# The library (config, model, loss, data, eval, train) never imports the runtime; the runtime (spklip.runtime: Ray,
# MLflow, the run's orchestration, sweeps) sits on the library; commands, the CLI and the sweep specs sit on top.
LIBRARY_BANS = {"spklip.runtime", "spklip.commands", "spklip.cli", "spklip.sweeps"}
LAYERS = {
    "spklip.config": (LIBRARY_BANS | {"spklip.model", "spklip.data", "spklip.eval", "spklip.loss", "spklip.train"},
                      {"ray", "mlflow", "torch"}),
    "spklip.model": (LIBRARY_BANS | {"spklip.data", "spklip.eval", "spklip.train"}, {"ray", "mlflow"}),
    "spklip.loss": (LIBRARY_BANS | {"spklip.train"}, {"ray", "mlflow"}),
    "spklip.data": (LIBRARY_BANS | {"spklip.eval", "spklip.train"}, {"ray", "mlflow"}),
    "spklip.eval": (LIBRARY_BANS | {"spklip.train"}, {"ray", "mlflow"}),
    "spklip.train": (LIBRARY_BANS, {"ray", "mlflow"}),
    "spklip.torchutil": (LIBRARY_BANS, {"ray", "mlflow"}),
    "spklip.outdir": (LIBRARY_BANS, {"ray", "mlflow"}),
    "spklip.cliargs": (LIBRARY_BANS, {"ray", "mlflow"}),
    "spklip.runtime": ({"spklip.commands", "spklip.cli", "spklip.sweeps"}, set()),
    "spklip.sweeps": ({"spklip.commands", "spklip.cli", "spklip.train"}, set()),
    "spklip.commands": ({"spklip.cli"}, set()),
}
RUNTIME = "spklip.runtime"  # the only package that imports ray or mlflow


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module the file imports, wherever the import statement is."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from spklip.runtime.tune import report` imports the module spklip.runtime.tune.report
            out += [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                    for a in node.names]
    return out


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _within(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_each_part_imports_only_what_it_may(part):
    banned_parts, banned_packages = LAYERS[part]
    bad = []
    for name, path in MODULES.items():
        if not _within(name, part):
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            if any(_within(imported, b) for b in banned_parts) or top in banned_packages:
                bad.append(f"{name} imports {imported}")
    assert not bad, "\n".join(bad)


def test_ray_and_mlflow_are_imported_only_under_the_runtime():
    """Every module outside spklip.runtime, at any level and inside functions too, is free of ray and mlflow."""
    bad = [f"{name} imports {imported}" for name, path in MODULES.items() if not _within(name, RUNTIME)
           for imported in _imports(path) if imported.split(".")[0] in {"ray", "mlflow"}]
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_layer():
    """A new top-level module has to be placed in LAYERS (or be the CLI itself), so no part escapes the checks."""
    placed = set(LAYERS) | {"spklip", "spklip.cli"}
    stray = [name for name in MODULES if not any(_within(name, part) for part in placed)]
    assert not stray, stray


def test_no_import_circle():
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for imported in _imports(path):
            if not imported.startswith("spklip"):
                continue
            if imported in MODULES and imported != name:
                deps.add(imported)
        graph[name] = deps
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is how packages work, not a circle
            if not (_within(dep, node) and MODULES[node].name == "__init__.py"):
                visit(dep)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "\n".join(cycles)


def test_no_package_defers_its_names_with_a_module_getattr():
    """No PEP 562 facade: a package's names are imported at its top, so the graph above is the one that runs."""
    bad = [name for name, path in MODULES.items()
           if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
                  for node in ast.parse(path.read_text()).body)]
    assert not bad, bad


def test_the_config_reads_presets_as_data_without_the_model_library():
    """spklip.config resolves ``model_preset`` from its own JSON presets; nothing under it imports spklip.model."""
    assert (ROOT / "config" / "presets" / "spklip-tiny.json").is_file()
    bad = [f"{name} imports {imported}" for name, path in MODULES.items() if _within(name, "spklip.config")
           for imported in _imports(path) if _within(imported, "spklip.model")]
    assert not bad, bad


def test_test_code_is_not_shipped_in_the_library():
    """The slow reference HSFE lives in tests/, and no module keeps a counter for tests to read."""
    assert not [p for p in ROOT.rglob("*.py") if "reference" in p.stem]
    defined = {node.name for path in MODULES.values() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & {"hsfe_reference", "hsfe_reference_block", "hsfe_subblock_loop"}
    assert "BUILT" not in (ROOT / "runtime" / "reader.py").read_text()


def test_no_function_is_called_by_a_string_name_across_layers():
    """Tracking's deferred calls are typed operations (`spklip.runtime.tracking.deferred`), not ``"module:function"``
    strings resolved with importlib: the import graph above is every call that runs. The one such string left names
    the operation of spool records written before (replay.LEGACY_TARGETS), read as data."""
    import re

    named = re.compile(r"^spklip(\.\w+)+:\w+$")
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                   and named.match(n.value)]
        if name == "spklip.runtime.tracking.replay":
            from spklip.runtime.tracking.replay import LEGACY_TARGETS

            strings = [s for s in strings if s not in LEGACY_TARGETS]
        bad += [f"{name}: {s!r}" for s in strings]
        if _within(name, "spklip.runtime.tracking") and "importlib" in _imports(path):
            bad.append(f"{name} imports importlib")
    assert not bad, bad
