"""The package's import structure: no import circle (imports inside functions included), and the
layers below the commands never import them."""

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "sae_lens_jumprelu"
ROOT = "sae_lens_jumprelu"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere in its body (``from a import b`` counts ``a.b``
    where ``b`` is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {name for name in found if name in MODULES and name != ROOT}


def import_graph() -> "nx.DiGraph[str]":
    graph: nx.DiGraph[str] = nx.DiGraph()
    for name, path in MODULES.items():
        if name.endswith("__main__"):
            continue
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imported_modules(path))
    return graph


def test_the_graph_sees_imports_inside_functions() -> None:
    # cli imports each command inside the function that runs it
    assert f"{ROOT}.commands.train" in import_graph().successors(f"{ROOT}.commands.cli")


def test_no_import_circle() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_data_and_training_never_import_commands() -> None:
    graph = import_graph()
    for layer in ("data", "training"):
        for name in (n for n in graph if n.startswith(f"{ROOT}.{layer}")):
            reached = nx.descendants(graph, name)
            bad = sorted(n for n in reached if n.startswith(f"{ROOT}.commands"))
            assert bad == [], f"{name} reaches {bad}"
