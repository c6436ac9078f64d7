"""The package's layering, read from its import statements: the loss math imports nothing from the layers
that read files or run the caption encoder, and no two modules import each other.

Read from the source (every ``import`` statement, those inside functions included), not from what an
import loads: the package imports lazily inside functions, which an import-time check (as the start-up
hook's, tests/test_install.py) cannot see. ``eval/`` and ``patches/`` are read under the names they ship
as (``xsample_openclip.eval``, ``xsample_openclip.patches``).
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"xsample_openclip": REPO / "xsample_openclip", "xsample_openclip.eval": REPO / "eval",
         "xsample_openclip.patches": REPO / "patches"}
#: What the loss math (``xsample_openclip.losses``) may import from the package: itself.
LOSS_FLOOR = "xsample_openclip.losses"


def modules():
    """{dotted module name: source path} of every module of the package."""
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imported(name, path, known):
    """The package modules ``name`` imports anywhere in its source (a name imported from a module counts as
    that module; a submodule imported from a package counts as the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m in known}


def import_graph():
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_the_graph_reader_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    # eval/runner.py: "from . import checkpoints, ..." and "from .probe_run import ProbeRun" at the top;
    # targets/flags.py imports .calibrate only inside functions
    assert {"xsample_openclip.eval.checkpoints", "xsample_openclip.eval.probe_run"} <= graph["xsample_openclip.eval.runner"]
    assert "xsample_openclip.targets.calibrate" in graph["xsample_openclip.targets.flags"]
    assert len(graph) > 100


def test_the_loss_math_imports_nothing_above_it():
    graph = import_graph()
    above = {name: sorted(m for m in deps if m != LOSS_FLOOR and not m.startswith(LOSS_FLOOR + "."))
             for name, deps in graph.items() if name == LOSS_FLOOR or name.startswith(LOSS_FLOOR + ".")}
    assert len(above) >= 8 and not any(above.values()), {k: v for k, v in above.items() if v}


def test_no_two_modules_import_each_other():
    graph = import_graph()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a != b and a in graph[b]})
    assert not pairs, pairs
