"""The import rule of docs/architecture.md, over every module's module-level imports (imports inside a
function are lazy by design: ONNX, FastAPI, matplotlib load only when their command runs): a module imports
only modules of its own room or of rooms to its left, so the rule holds transitively too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tinymnist"
# Rooms in the order data flows: a module may import its own room and the rooms before it, never one after.
ROOMS = {
    "ground": ("errors", "names", "targets", "machine", "data", "files"),
    "models": ("models", "user_models", "layers"),
    "training": ("recipes", "schedule", "placement", "engine", "executor", "stacked"),
    "steps": ("steps", "journey_file"),
    "runs": ("records", "loading", "runner", "supervise", "logsinks"),
    "search": ("search_space", "search_study", "study_analysis", "search"),
    "reports": ("render", "results_doc", "report", "handin", "studies"),
    "use": ("inference", "serve", "deploy", "api"),
    "cli": ("cli", "cli_common", "cli_use", "cli_search", "cli_journey", "__main__", "__init__"),
}
LEVEL = {module: i for i, modules in enumerate(ROOMS.values()) for module in modules}


def module_imports(path: Path) -> set[str]:
    """The tinymnist modules ``path`` imports when it is imported (module level, conditionals included)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        for n in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                out |= {n.module.split(".")[0]} if n.module else {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("tinymnist."):
                out.add(n.module.split(".")[1])
    return out - {"__version__"}  # the version string, read from the package


def graph() -> dict[str, set[str]]:
    return {p.stem: module_imports(p) for p in SRC.glob("*.py")}


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Every import that points to a room after the importer's, and every module in no room."""
    out = [f"{m} is in no room of tests/test_architecture.py" for m in imports if m not in LEVEL]
    out += [f"{m} -> {d}" for m, deps in sorted(imports.items()) for d in sorted(deps)
            if m in LEVEL and LEVEL.get(d, -1) > LEVEL[m]]
    return out


def test_every_module_imports_only_rooms_to_its_left() -> None:
    assert violations(graph()) == []


def test_a_planted_violation_is_caught() -> None:
    planted = graph()
    planted["errors"] = planted["errors"] | {"cli"}  # the ground importing the command line
    planted["search"] = planted["search"] | {"studies"}  # a search worker pulling in the docs generator
    assert set(violations(planted)) == {"errors -> cli", "search -> studies"}
    planted["newcomer"] = set()
    assert "newcomer is in no room of tests/test_architecture.py" in violations(planted)


def test_a_search_worker_loads_neither_matplotlib_nor_the_docs_code() -> None:
    code = ("import sys, tinymnist.search; bad = {'matplotlib', 'tinymnist.studies', 'tinymnist.report'} & "
            "set(sys.modules); print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
