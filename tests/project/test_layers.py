"""The package's folders import one way: tools above measurement and the calculator, those above
the trainers and models, the models above the runtime; no module is part of an import cycle, and
no module (or test) imports another's private names. Every import counts, function-local ones
included, since they are as much a dependency as the ones at the top of a file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ocp_graphpar"

#: Each folder's layer: a folder may import from lower layers only (``tools.*`` siblings are
#: checked by :data:`TOOLS_MAY_USE`).
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "parallel": 1,
    "datasets": 1,
    "models": 2,
    "trainers": 2,
    "launch": 3,
    "measure": 3,
    "calculator": 3,
    "tools": 4,
    "cli": 5,
    "ocp_graphpar": 5,
}

#: The tools each tool may use: the demo drives the data tools, the export and the reports. The
#: bench, the planner and the demo share their measurement through ``measure`` (the planner's
#: estimates included) and use no other tool.
TOOLS_MAY_USE = {
    "tools.demo": {"tools.data", "tools.export", "tools.report"},
}


def _folder(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "ocp_graphpar"
    if parts[1] == "tools" and len(parts) > 2:
        return f"tools.{parts[2]}"
    return parts[1]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """Folder -> {(imported folder, importing file)} for every import of another folder."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _folder(module.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ocp_graphpar.") and _folder(name) != source:
                    found[source].add((_folder(name), str(path.relative_to(PACKAGE.parent))))
    return found


def _layer(folder: str) -> int:
    return LAYERS[folder.split(".")[0]]


def test_every_folder_has_a_layer():
    imports = _imports()
    folders = set(imports) | {target for edges in imports.values() for target, _ in edges}
    assert {f.split(".")[0] for f in folders} <= set(LAYERS), folders


def test_folders_import_only_from_lower_layers():
    upward = [
        f"{where} ({source} -> {target})"
        for source, edges in _imports().items()
        for target, where in edges
        if not source.startswith("tools.") or not target.startswith("tools.")
        if _layer(target) >= _layer(source)
    ]
    assert not upward, "imports that run up or sideways:\n" + "\n".join(sorted(upward))


def test_tools_share_measurement_not_each_other():
    sideways = [
        f"{where} ({source} -> {target})"
        for source, edges in _imports().items()
        if source.startswith("tools.")
        for target, where in edges
        if target.startswith("tools.") and target not in TOOLS_MAY_USE.get(source, set())
    ]
    assert not sideways, "tools importing other tools:\n" + "\n".join(sorted(sideways))


def _module_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a package counts as
    the submodule when there is one)."""
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            # a submodule importing its own package runs the package first: no cycle
            targets |= {n for n in names if n in modules and not module.startswith(f"{n}.")}
        graph[module] = targets - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                cycles.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert not _cycles(_module_imports())


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ocp_graphpar"):
                private += [
                    f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not private, "\n".join(private)


def test_the_bench_stays_smaller_than_what_it_measures():
    """Tooling is held to a budget: the bench's runner, records, limits and report together."""
    bench = PACKAGE / "tools" / "bench"
    lines = sum(len(path.read_text().splitlines()) for path in bench.glob("*.py"))
    assert lines <= 1800, f"tools/bench has {lines} lines; its budget is 1,800"
