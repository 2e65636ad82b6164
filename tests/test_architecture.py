"""The layout's rules, read from the source (docs/ARCHITECTURE.md): where Ray is imported, that the run's
generic modules name no stage, that only the entry points import the stage registry, no import cycle in the
static graph (imports under `if TYPE_CHECKING:` and inside functions count), and small modules and functions."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.registry import STAGES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("catalog_schema/*.py")])
GENERIC = ("pipeline/run.py", "pipeline/plan.py", "pipeline/planning.py", "pipeline/reuse.py", "pipeline/catalog/writer.py",
           "pipeline/catalog/draft.py",
           *(str(p.relative_to(ROOT)) for p in ROOT.glob("pipeline/runner/*.py")))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, types_too: bool = True) -> set[str]:
    """Modules the file imports anywhere in it; with `types_too` False, not those under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = set() if types_too else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_only_the_runner_imports_ray():
    importers = [str(p.relative_to(ROOT)) for p in SOURCES
                 if any(m == "ray" or m.startswith("ray.") for m in _imports(p, types_too=False))]
    assert importers and all(p.startswith("pipeline/runner/") for p in importers), importers


def test_the_run_plan_reuse_writer_and_runner_name_no_stage():
    for rel in GENERIC:
        code = ast.parse((ROOT / rel).read_text())
        strings = [n.value for n in ast.walk(code) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        names = [n.id for n in ast.walk(code) if isinstance(n, ast.Name)] + \
                [n.attr for n in ast.walk(code) if isinstance(n, ast.Attribute)]
        for stage in STAGES:
            assert stage not in strings and not any(stage in name.lower() for name in names), (rel, stage)


def test_only_the_entry_points_import_the_stage_registry():
    """The command line and run_job hand the stage objects to the plan, the reuse decisions and the writer."""
    importers = {_module(p) for p in SOURCES if "pipeline.registry" in _imports(p)}
    assert importers == {"pipeline.cli", "pipeline.run"}


def test_no_import_cycle_in_the_static_graph():
    """Every import counts, type-only ones too: a cycle hidden behind TYPE_CHECKING still ties the modules together."""
    modules = {_module(p): p for p in SOURCES}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):  # a package importing its own submodule is fine
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_modules_and_functions_stay_small():
    for path in SOURCES:
        source = path.read_text()
        assert source.count("\n") <= 300, f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_the_command_line_loads_nothing_heavy_before_it_handles_signals():
    """`neuron-catalog` handles SIGINT and SIGTERM from the first line of `main`: importing pipeline.cli loads no
    torch, Ray, numpy or pyarrow (a Ctrl-C while they load is then one line, not a traceback)."""
    import subprocess
    import sys

    heavy = ("torch", "ray", "numpy", "pyarrow", "pandas", "zarr", "scipy")
    code = f"import sys, pipeline.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
    # reading a catalog (describe, query, export, render) needs neither torch nor Ray nor scipy
    readers = "pipeline.catalog.describe, pipeline.catalog.query, pipeline.catalog.export, pipeline.render"
    code = f"import sys, {readers}; print(sorted(m for m in ('torch', 'ray', 'scipy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_a_stage_adds_to_the_manifest_but_never_replaces_what_another_wrote():
    import pytest

    from pipeline.catalog.draft import ManifestPart

    manifest = {"settings": {}, "summary": {"units": 3}, "layers": [{"name": "conv1", "units": 3}]}
    ManifestPart({"layers_seen": 1}, {"k": 2}, {"dead_units": 0}, {"conv1": {"interpretable_units": 1}}).merge_into(manifest, "a")
    assert manifest["summary"] == {"units": 3, "dead_units": 0} and manifest["settings"] == {"a": {"k": 2}}
    assert manifest["layers"][0] == {"name": "conv1", "units": 3, "interpretable_units": 1}
    for clash in (ManifestPart({"layers_seen": 2}), ManifestPart(summary={"units": 4}),
                  ManifestPart(layers={"conv1": {"units": 9}}), ManifestPart(settings={"k": 1})):
        with pytest.raises(ValueError, match="would replace"):
            clash.merge_into(manifest, "a")


def test_a_stage_reads_only_the_results_it_declares_it_needs():
    import pytest

    from pipeline.stages.activations.stage import ActivationsStage
    from pipeline.stages.dissection.stage import DissectionStage
    from pipeline.stages.protocol import Context

    ctx = Context(plan=None, settings=None, part=None, upstream={ActivationsStage: "the activations' result"})
    assert ctx.result_of(ActivationsStage) == "the activations' result"
    with pytest.raises(KeyError, match="dissection is not among the stages this one needs"):
        ctx.result_of(DissectionStage)
    # every analysis of the units reads the activations' results; the dictionary reads the layers' outputs itself
    assert all(ActivationsStage in stage.needs for name, stage in STAGES.items() if name not in ("activations", "dictionary"))
    assert STAGES["dictionary"].needs == ()
