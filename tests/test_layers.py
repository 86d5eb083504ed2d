"""The import drawing: every pipeline module imports only modules on floors below its own.

Floors, top to bottom. A module may import its own package's earlier files (study/'s files are
listed in import order), never a module on a higher floor. Imports under ``TYPE_CHECKING`` are
annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.config import PROJECT_ROOT

FLOORS: list[list[str]] = [
    ["pipeline.__main__"],
    ["pipeline.cli"],  # the commands: add_* parsers; cmd_* import their work lazily
    ["pipeline.compare", "pipeline.export", "pipeline.reeval", "pipeline.report",
     "pipeline.relocate"],
    ["pipeline.model_card", "pipeline.exported"],
    ["pipeline.study"],  # one room, in STUDY_ORDER
    ["pipeline.evaluate", "pipeline.train"],
    ["pipeline.model_log"],
    ["pipeline.prepare", "pipeline.callbacks"],
    ["pipeline.module", "pipeline.run_log", "pipeline.checkpoint", "pipeline.costs"],
    ["pipeline.tracking"],
    ["pipeline.config_load"],  # YAML and key=value -> a Config; how a value is shown
    ["pipeline.config"],
    # the registries (what config validates against) and leaf utilities
    ["pipeline.data", "pipeline.networks", "pipeline.losses", "pipeline.drs", "pipeline.metrics",
     "pipeline.plots", "pipeline.logs", "pipeline.interrupt", "pipeline.batches",
     "pipeline.devices", "pipeline.outputs", "pipeline.sqlite"],
    # the readers: files and generators -> a Dataset, from plain arguments
    ["pipeline.readers", "pipeline.tables"],
    ["pipeline.dataset", "pipeline.errors", "pipeline.faults", "pipeline"],
]
STUDY_ORDER = ["conditions", "space", "spec", "storage", "store", "choice", "recover", "objective",
               "parent_run", "worker", "summary", "sweep"]


def floor_of(module: str) -> int:
    best = None
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (level, name)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[0]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            # `from pipeline.study import parent_run` imports pipeline.study.parent_run
            found.extend(f"{node.module}.{alias.name}" for alias in node.names
                         if (PROJECT_ROOT / (node.module.replace(".", "/"))
                             / f"{alias.name}.py").exists())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [name for name in found if name == "pipeline" or name.startswith("pipeline.")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in sorted((PROJECT_ROOT / "pipeline").rglob("*.py")):
        me = module_name(path)
        for target in imports(path):
            if target == me or (me.startswith(target + ".") and path.name == "__init__.py"):
                continue
            mine, theirs = floor_of(me), floor_of(target)
            if me.startswith("pipeline.study.") and target.startswith("pipeline.study."):
                a, b = me.split(".")[2], target.split(".")[2]
                if STUDY_ORDER.index(b) >= STUDY_ORDER.index(a):
                    upward.append(f"{me} -> {target} (study/ files import earlier ones only)")
            elif theirs < mine or (theirs == mine and _room(me) != _room(target)
                                   and target != "pipeline"):
                upward.append(f"{me} (floor {mine}) -> {target} (floor {theirs})")
    assert not upward, "\n".join(upward)


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_compare_and_export_need_only_the_store() -> None:
    """They read a finished study: its store and which trial to take, never the code that
    runs trials (objective, parent_run, sweep import Lightning and start processes)."""
    for name in ("compare", "export"):
        study_imports = {t for t in imports(PROJECT_ROOT / "pipeline" / f"{name}.py")
                         if t.startswith("pipeline.study")}
        assert study_imports <= {"pipeline.study.store", "pipeline.study.storage",
                                 "pipeline.study.choice"}, study_imports
        assert "pipeline.study.store" in study_imports
