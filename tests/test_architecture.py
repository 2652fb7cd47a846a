"""The import rule of docs/architecture.md: the subpackages of src/tinymnist are rooms in the order data flows,
and a module imports (at module level, directly or through others) only its own room and the rooms before it.
Imports inside a function are lazy by design (ONNX, FastAPI, Optuna and matplotlib load only when their command
runs) and are not counted."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tinymnist"
# The ground is the package's top-level modules; then a subpackage per room; the package's face last.
ROOMS = ("ground", "models", "training", "steps", "runs", "search", "reports", "use", "cli", "face")
LEVEL = {room: i for i, room in enumerate(ROOMS)}
FACE = {"__init__", "__main__"}


def module_name(path: Path) -> str:
    """``training.engine`` for src/tinymnist/training/engine.py; a package's __init__ is the package."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def room(module: str) -> str | None:
    """The room of a module; None for a module the rule does not know (a new top-level folder)."""
    if module in FACE:
        return "face"
    first = module.split(".")[0]
    if "." not in module and (SRC / f"{module}.py").exists():
        return "ground"
    return first if first in LEVEL else None


def module_imports(path: Path) -> set[str]:
    """The tinymnist modules ``path`` imports when it is imported (module level, conditionals included)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        for n in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(n, ast.ImportFrom) and n.level:
                raise AssertionError(f"{path}: a relative import; the package imports itself by absolute names")
            if isinstance(n, ast.ImportFrom) and n.module == "tinymnist":
                out |= {a.name for a in n.names if a.name != "__version__"}  # the version string: the package
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("tinymnist."):
                out.add(n.module.removeprefix("tinymnist."))
            elif isinstance(n, ast.Import):
                out |= {a.name.removeprefix("tinymnist.") for a in n.names if a.name.startswith("tinymnist.")}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): module_imports(p) for p in SRC.rglob("*.py") if "starter" not in p.parts}


def closure(imports: dict[str, set[str]], module: str) -> set[str]:
    """Every module ``module`` loads at import time, through the modules it imports."""
    seen, todo = set(), [module]
    while todo:
        for dep in imports.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Every module in no room, and every module that loads (directly or not) a module of a later room."""
    out = [f"{m} is in no room of tests/test_architecture.py" for m in imports if room(m) is None]
    for m in sorted(imports):
        if room(m) is None:
            continue
        for dep in sorted(closure(imports, m)):
            if room(dep) is not None and LEVEL[room(dep)] > LEVEL[room(m)]:
                out.append(f"{m} -> {dep}")
    return out


def test_every_module_loads_only_rooms_to_its_left() -> None:
    assert violations(graph()) == []


def test_every_room_is_a_folder_with_a_docstring() -> None:
    for name in ROOMS[1:-1]:
        init = SRC / name / "__init__.py"
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), name


def test_a_planted_violation_is_caught() -> None:
    planted = graph()
    planted["errors"] = planted["errors"] | {"cli.main"}  # the ground importing the command line
    planted["search.space"] = planted["search.space"] | {"reports.search_doc"}  # the search pulling in the docs
    found = set(violations(planted))
    assert {"errors -> cli.main", "search.space -> reports.search_doc"} <= found
    # transitively: a worker imports the space, which now loads the docs generator
    assert "search.workers -> reports.search_doc" in found
    planted["newcomer.thing"] = set()
    assert "newcomer.thing is in no room of tests/test_architecture.py" in violations(planted)


def test_reading_a_run_record_loads_no_training_machinery() -> None:
    loaded = closure(graph(), "runs.records")
    assert not {m for m in loaded if m.startswith("training.") and m != "training.recipes"}, loaded


def test_a_search_worker_loads_neither_matplotlib_nor_the_docs_code() -> None:
    code = ("import sys, tinymnist.search.workers; print(sorted({'matplotlib', 'tinymnist.reports.search_doc', "
            "'tinymnist.reports.report'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_room_has_tests() -> None:
    tests = [p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name]
    untested = [room for room in ROOMS[1:-1] if not any(f"tinymnist.{room}" in text for text in tests)]
    assert untested == []
