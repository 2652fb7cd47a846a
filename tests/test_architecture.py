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


def top_level_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements ``path`` runs when it is imported: module level, conditionals included, but not
    the block of ``if TYPE_CHECKING:``, which never runs."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node = ast.If(test=node.test, body=[], orelse=node.orelse)
        for n in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(n, ast.Import | ast.ImportFrom):
                out.append(n)
    return out


def module_imports(path: Path) -> set[str]:
    """The tinymnist modules ``path`` imports when it is imported (module level, conditionals included)."""
    out = set()
    for n in top_level_imports(path):
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


def third_party() -> dict[str, set[str]]:
    """Per module, the packages from outside tinymnist (``torch``, ``numpy``...) it imports at module level."""
    out = {}
    for p in SRC.rglob("*.py"):
        if "starter" in p.parts:
            continue
        names = set()
        for n in top_level_imports(p):
            names |= {a.name for a in n.names} if isinstance(n, ast.Import) else {n.module or ""}
        out[module_name(p)] = {name.split(".")[0] for name in names} - {"tinymnist", "__future__", ""}
    return out


def closure(imports: dict[str, set[str]], module: str) -> set[str]:
    """Every module ``module`` loads at import time, through the modules it imports."""
    seen, todo = set(), [module]
    while todo:
        for dep in imports.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def loaded_at_import(imports: dict[str, set[str]], module: str) -> set[str]:
    """``closure`` with the packages each loaded module sits in, which Python runs first (importing
    tinymnist.cli.main runs tinymnist/__init__.py and cli/__init__.py), and what they load; ``module`` too."""
    loaded, todo = set(), [module]
    while todo:
        m = todo.pop()
        parts = m.split(".")
        for found in {m, *closure(imports, m), *(".".join(parts[:i]) for i in range(1, len(parts))), "__init__"}:
            if found not in loaded:
                loaded.add(found)
                todo.append(found)
    return loaded


def heavy_imports(imports: dict[str, set[str]], outside: dict[str, set[str]], module: str) -> dict[str, list[str]]:
    """What of torch, numpy, safetensors and the training loop importing ``module`` loads, by the module that
    imports it at module level."""
    loaded = loaded_at_import(imports, module)
    found = {m: sorted(outside.get(m, set()) & {"torch", "numpy", "safetensors"}) for m in loaded}
    found |= {m: ["the training loop"] for m in loaded & {"training.engine", "training.executor", "runs.runner"}}
    return {m: names for m, names in found.items() if names}


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


def test_the_command_line_loads_no_torch() -> None:
    """`import tinymnist.cli.main` (what `tinymnist --version` and every command start with) loads neither torch
    nor the training loop: the commands that need them import them inside the function that runs."""
    imports, outside = graph(), third_party()
    assert heavy_imports(imports, outside, "cli.main") == {}
    # planted: a cli module importing torch, and one importing the ground's data module, which imports torch
    assert heavy_imports(imports, outside | {"cli.use": {"torch"}}, "cli.main") == {"cli.use": ["torch"]}
    planted = imports | {"cli.journey": imports["cli.journey"] | {"data"}}
    assert heavy_imports(planted, outside, "cli.main") == {"data": ["numpy", "torch"]}
    # and the package face, which Python runs before any of its modules
    planted = imports | {"__init__": imports["__init__"] | {"runs.runner"}}
    assert "runs.runner" in heavy_imports(planted, outside, "cli.main")


def test_a_search_worker_loads_neither_matplotlib_nor_the_docs_code() -> None:
    code = ("import sys, tinymnist.search.workers; print(sorted({'matplotlib', 'tinymnist.reports.search_doc', "
            "'tinymnist.reports.report'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_room_has_tests() -> None:
    tests = [p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name]
    untested = [room for room in ROOMS[1:-1] if not any(f"tinymnist.{room}" in text for text in tests)]
    assert untested == []
