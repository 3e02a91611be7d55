"""The package's shape: no import cycle, no module named like the standard library's, the run folder written once."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from conftest import REPO

from crys_pipeline.run_id import RunId

PACKAGE = REPO / "crys_pipeline"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at module level or inside a function)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crys_pipeline"):
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "crys_pipeline.sources.folder" in graph["crys_pipeline.ingest"]
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


#: Package names the architecture gives (crys_pipeline/io/: the only package that opens artifacts); every reader
#: imports it as `crys_pipeline.io` (`from crys_pipeline import io`, the standard library's as `_stdio`).
DESIGNED = {"io"}


def test_no_module_named_like_the_standard_library() -> None:
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    assert sorted(names & set(sys.stdlib_module_names) - DESIGNED) == []


def test_the_run_folder_is_written_in_run_id_only() -> None:
    """`seed{seed}` (the run folder's last part) appears in run_id.py and nowhere else in the package or rules."""
    files = [*PACKAGE.rglob("*.py"), *REPO.glob("workflow/**/*.smk"), REPO / "Snakefile", *REPO.glob("bench/*.py")]
    spelled = [str(p.relative_to(REPO)) for p in files if re.search(r"/seed\{", p.read_text())]
    assert spelled == ["crys_pipeline/run_id.py"]
    run = RunId("mp_2018", "e_form", "crysmmnet", "low20", 2)
    assert str(run.folder()) == RunId.PATTERN.format(**vars(run))
    assert run.key == "mp_2018/e_form/crysmmnet/low20/seed2"
    assert RunId.from_folder(run.folder("elsewhere")) == run == RunId.of({**vars(run), "seed": "2", "test_mae": 1.0})
    assert RunId.from_folder(Path("results/train/mp_2018/e_form")) is None
