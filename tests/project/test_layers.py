"""The package's folders import one way: tools above measurement and the calculator, those above
the trainers and models, the models above the runtime. Every import counts, function-local ones
included, since they are as much a dependency as the ones at the top of a file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ocp_graphpar"

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

#: The tools each tool may use: the demo drives the data tools, the export and the reports; the
#: bench sets the planner's estimates beside its measurements and builds its data with the data
#: tools. The bench, the planner and the demo share their measurement through ``measure``.
TOOLS_MAY_USE = {
    "tools.bench": {"tools.data", "tools.plan"},
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
