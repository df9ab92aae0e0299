"""The package's floor plan, read from its imports: stages import only earlier stages, and no
module imports itself back through others (see docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fxsurgeon"

#: the pipeline's stages, earliest first; a module may import its own stage and earlier ones
STAGES = ["errors", "zoo", "channels", "layers", "ops", "analysis", "judging", "planning", "surgery",
          "persistence", "training", "integrations", "experiments"]
#: the top level, which may import every stage and which no stage imports: the public face
#: (``__init__``, the command line) and the old module paths kept for pickles and users
INTERFACE = {"__init__", "__main__", "cli", "importance", "partitioned", "folded", "tracing"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, known: set[str]) -> set[str]:
    """The fxsurgeon modules ``path`` imports, at the top or inside functions (what an
    ``if TYPE_CHECKING:`` block imports for annotations does not count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imported(path.read_text(), package, known)


def imported(source: str, package: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source``, a module of ``package``, imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "fxsurgeon")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "fxsurgeon":
                subs = {f"{target}.{a.name}" for a in node.names} & known
                found.update(subs or {target})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found & known


def stage(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def import_graph() -> nx.DiGraph:
    found = modules()
    graph = nx.DiGraph()
    for name, path in found.items():
        graph.add_node(name)
        graph.add_edges_from((name, other) for other in imports(path, set(found)) if other != name)
    return graph


def test_every_module_belongs_to_a_stage_or_the_top_level():
    strays = sorted(m for m in modules() if stage(m) not in STAGES and stage(m) not in INTERFACE)
    assert not strays, f"modules outside every stage (add them to a stage folder): {strays}"
    top = [m for m in modules() if m.count(".") == 1 and not (PACKAGE / m.split(".")[1]).is_dir()]
    assert len(top) <= 12, f"{len(top)} modules at the top level: {top}"


def test_stages_import_only_earlier_stages():
    order = {s: k for k, s in enumerate(STAGES)}
    wrong = []
    for a, b in import_graph().edges:
        sa, sb = stage(a), stage(b)
        if sb in INTERFACE and sa not in INTERFACE:
            wrong.append(f"{a} imports the top level's {b}")
        elif sa in order and sb in order and order[sb] > order[sa]:
            wrong.append(f"{a} ({sa}) imports the later stage's {b} ({sb})")
    assert not wrong, "\n".join(wrong)


def test_the_package_imports_no_trainer_integration():
    """``import fxsurgeon`` needs torch, networkx and numpy alone: no module it imports imports
    fxsurgeon.integrations, whose modules import Lightning or transformers."""
    graph = import_graph()
    reached = sorted(m for m in nx.descendants(graph, "fxsurgeon") if stage(m) == "integrations")
    assert not reached, f"import fxsurgeon imports {reached}"
    assert any(stage(m) == "integrations" for m in graph)


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_checks_see_imports():
    """The reader finds relative, absolute, lazy and package-member imports (what the tests
    above rely on), and leaves annotation-only ones out."""
    known = {"fxsurgeon.analysis.graph", "fxsurgeon.surgery.rewriter", "fxsurgeon.judging.importance",
             "fxsurgeon.channels.tags", "fxsurgeon.errors"}
    source = ("from typing import TYPE_CHECKING\n"
              "from ..errors import FxSurgeonError\n"
              "from ..judging import importance\n"
              "if TYPE_CHECKING:\n    from ..channels.tags import Tags\n"
              "def f():\n    import fxsurgeon.surgery.rewriter\n")
    assert imported(source, "fxsurgeon.analysis", known) == {
        "fxsurgeon.errors", "fxsurgeon.judging.importance", "fxsurgeon.surgery.rewriter"}


@pytest.mark.parametrize("name", ["partitioned", "folded", "tracing", "importance"])
def test_old_module_paths_still_import(name):
    """Networks pickled before the move name ``fxsurgeon.partitioned``, ``fxsurgeon.folded`` and
    ``fxsurgeon.tracing``;
    ``fxsurgeon.importance`` is public."""
    import importlib

    assert importlib.import_module(f"fxsurgeon.{name}").__all__
