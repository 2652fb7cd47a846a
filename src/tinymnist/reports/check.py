"""What `tinymnist check` reads: a journey's run records, judged from their evidence. The verdict is recomputed
from metrics.jsonl and the recipe (summary.json is compared with it, never trusted alone), and each step's journey
entry (model code, recipe settings, data) is compared with what its run recorded.

Standard library only: a student's CI runs this with no torch, numpy or tqdm installed (a test imports it so).
The records are JSON; a model's code identity is read from its source with ``ast``, never by importing it."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

from tinymnist.errors import CheckpointError, UsageError, counted
from tinymnist.names import current
from tinymnist.targets import LAST_K, first_epoch_holding, judge

MAX_RECORD_BYTES = 16 * 2**20  # a record's text file is a few kB; anything this large is not one


def run_path(root: str | os.PathLike, step: str, seed: int) -> Path:
    """ROOT/STEP/seed-N, as runs.records.run_dir names a run (which this module cannot import: torch)."""
    return Path(root, *step.split("/"), f"seed-{seed}")


def _read_text(path: Path) -> str:
    """A record's text file: a regular file (never followed through a symlink), bounded in size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the run record is damaged.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be opened as a regular file ({e.strerror}); the run record is "
                              f"damaged.") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            raise CheckpointError(f"{path} is not a run record's file (not a regular file of at most "
                                  f"{MAX_RECORD_BYTES // 2**20} MiB); the run record is damaged.")
        raw = f.read(MAX_RECORD_BYTES + 1)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not text; the run record is damaged.") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(_read_text(path))
    except ValueError:
        raise CheckpointError(f"{path} is not valid JSON; the run record is damaged.") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the run record is damaged.")
    return value


@dataclasses.dataclass(frozen=True)
class Evidence:
    """A finished run's three text files, read and checked for their shape."""

    path: Path
    header: dict  # recipe.json
    metrics: list[dict]  # metrics.jsonl, one row per epoch
    summary: dict  # summary.json

    @property
    def recipe(self) -> dict:
        return self.header["recipe"]

    @property
    def test_accs(self) -> list[float]:
        return [m["test_acc"] for m in self.metrics]


def read_evidence(run: Path) -> Evidence | None:
    """The finished run in ``run``; None when it has no summary.json (not finished, or not there). A record
    that cannot be read as one is a CheckpointError naming the file and what is wrong."""
    if not (run / "summary.json").exists():
        return None
    header, summary = _read_json(run / "recipe.json"), _read_json(run / "summary.json")
    if not isinstance(header.get("recipe"), dict) or not isinstance(header["recipe"].get("epochs"), int):
        raise CheckpointError(f"{run / 'recipe.json'} has no recipe with its epochs; the run record is damaged.")
    if not isinstance(summary.get("params"), int):
        raise CheckpointError(f"{run / 'summary.json'} has no parameter count (params); the run record is damaged.")
    metrics = []
    for i, line in enumerate(_read_text(run / "metrics.jsonl").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), int | float) and not isinstance(row[k], bool)
                                                for k in ("test_acc", "train_acc")):
            raise CheckpointError(f"{run / 'metrics.jsonl'} line {i} is not an epoch's metrics; the run record is "
                                  f"damaged.")
        metrics.append(row)
    if not metrics:
        raise CheckpointError(f"{run / 'metrics.jsonl'} holds no epoch, but the run has a summary; the run record "
                              f"is damaged.")
    return Evidence(run, header, metrics, summary)


# --- what the evidence says --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Judged:
    """A run judged from its log: the figures and the verdict, and where summary.json disagrees."""

    params: int  # from summary.json: counting them needs the model, which a check does not build
    epochs: int
    min_last_k: float
    met: bool
    checks: list[dict]
    disagreements: list[str]


def _same(a: object, b: object) -> bool:
    """Equal values, a number compared as a number (a TOML `lr = 1` is the recorded 1.0; true is not 1)."""
    def number(x: object) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    return abs(a - b) < 1e-9 if number(a) and number(b) else type(a) is type(b) and a == b


def judge_evidence(run: Evidence, last_k: int = LAST_K) -> Judged:
    """The exercise's verdict recomputed from metrics.jsonl and the recipe, and each figure of summary.json that
    disagrees with them (the summary's own last-K minimum is read with the K it was written with)."""
    accs, params = run.test_accs, run.summary["params"]
    verdict = judge(params, accs, last_k).to_dict()
    figures = {"epochs": len(accs), "best_test_acc": max(accs), "last_test_acc": accs[-1],
               "best_train_acc": max(m["train_acc"] for m in run.metrics),
               "last_train_acc": run.metrics[-1]["train_acc"], "first_epoch_holding": first_epoch_holding(accs)}
    said = run.summary
    wrong = [f"{key} {said[key]} (its log gives {value})" for key, value in figures.items()
             if key in said and not _same(said[key], value)]
    for key in said:
        k = key.removeprefix("min_test_acc_last_")
        if k != key and k.isdigit() and int(k) > 0 and not _same(said[key], min(accs[-int(k):])):
            wrong.append(f"{key} {said[key]} (its log gives {min(accs[-int(k):])})")
        if k != key and k.isdigit() and int(k) > 0 and isinstance(said.get("verdict"), dict):
            logged = judge(params, accs, int(k)).met
            if said["verdict"].get("met") != logged:
                wrong.append(f"targets met: {said['verdict'].get('met')} (its log gives {logged})")
    if run.recipe["epochs"] != len(accs):
        wrong.append(f"its log has {counted(len(accs), 'epoch')}, its recipe {run.recipe['epochs']}")
    return Judged(params, len(accs), min(accs[-last_k:]), verdict["met"], verdict["checks"], wrong)


def data_line(header: dict, full_train: int | None = None) -> str:
    """The images a run trained on: '2,000 of 60,000 training images' (``full_train``: the training set's size,
    when known), else 'the first 2,000 training images (a subset)' or 'every training image'."""
    data = header.get("data") or {}
    train = data.get("train_images")
    if train is None:
        return f"all {full_train:,} training images" if full_train else "every training image"
    return f"{train:,} of {full_train:,} training images" if full_train else \
        f"the first {train:,} training images (a subset)"


# --- a model's code, as the run's identity sees it --------------------------------------------------------------

def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def model_code_sha256(path: Path, attr: str) -> str | None:
    """The SHA-256 of one model's code in a user's file: the class or function ``attr``, every top-level
    definition it uses (transitively) and the file's imports, compared as syntax (comments and layout do not
    count). Editing one class of a file of four leaves the other three the same. None when the file cannot be
    read or parsed, or does not define ``attr``."""
    try:
        tree = ast.parse(_read_text(path))
    except (CheckpointError, SyntaxError, ValueError):
        return None
    top = tree.body
    by_name = {name: node for node in top for name in _defined(node)}
    if attr not in by_name:
        return None
    wanted, todo = set(), [by_name[attr]]
    while todo:
        node = todo.pop()
        if id(node) in wanted:
            continue
        wanted.add(id(node))
        todo += [by_name[n] for n in _names(node) if n in by_name]
    kept = [node for node in top if id(node) in wanted or isinstance(node, ast.Import | ast.ImportFrom)]
    return hashlib.sha256("\n".join(ast.dump(node) for node in kept).encode()).hexdigest()


def model_code_change(model: str, header: dict, run: Path) -> str | None:
    """Why the user model ``model`` (FILE.py:NAME) is not the code the run in ``run`` trained, or None when it
    is: compared with the copy of the file the run kept (by code, so another class of the same file may change),
    else by the whole file's recorded SHA-256."""
    file, _, attr = model.rpartition(".py:")
    attr = attr.split(":")[0]
    path = Path(file + ".py")
    now = model_code_sha256(path, attr)
    if now is None:
        return f"model file {path.name} cannot be read or has no {attr}"
    source = header.get("model_source") or {}
    kept = run / source["file"] if source.get("file") else None
    if kept is not None and kept.is_file():
        return None if model_code_sha256(kept, attr) == now else f"model code changed ({attr} in {path.name})"
    if source.get("sha256"):
        same = hashlib.sha256(path.read_bytes()).hexdigest() == source["sha256"]
        return None if same else f"model file changed ({path.name})"
    return f"the run does not record the code of {attr}"


def entry_differences(model: str, settings: dict, run: Evidence, kept: dict | None = None) -> list[str]:
    """What no longer matches between a journey entry (its ``model`` and the recipe ``settings`` it sets) and the
    run recorded for it, in words: the model (its code, for a user's file), each recipe setting, the data.
    ``kept``: the settings the entry had when the run started (the run's copy of the journey file), so that a
    setting since removed from the journey is named too."""
    out, recorded = [], run.recipe
    was = str(recorded.get("model", ""))
    if ".py:" in model:
        name_now, name_was = (Path(m.rpartition(".py:")[0]).name + ":" + m.rpartition(".py:")[2] for m in (model, was))
        if ".py:" not in was or name_now != name_was:
            out.append(f"model changed: {name_was if '.py:' in was else was} -> {name_now}")
        elif (why := model_code_change(model, run.header, run.path)) is not None:
            out.append(why)
    elif current("model", was, note=False) != current("model", model, note=False):
        out.append(f"model changed: {was} -> {model}")
    changed = [k for k, v in settings.items() if k not in ("model", "seed") and not _same(recorded.get(k), v)]
    changed += [f"{k} (no longer set)" for k in (kept or {}) if k not in settings and k not in ("model", "seed")
                and _same(recorded.get(k), kept[k])]
    if changed:
        out.append(f"recipe changed: {', '.join(changed)}")
    if (run.header.get("data") or {}).get("train_images") is not None:
        out.append(f"trained on {data_line(run.header)}, not on every training image")
    if run.header.get("held_out", "test") != "test":
        out.append(f"scored on the {run.header['held_out']} split, not the test set")
    return out


def kept_settings(run: Evidence, name: str) -> dict | None:
    """The recipe settings of entry ``name`` in the copy of the journey file the run kept, if it kept one."""
    from tinymnist.steps.journey_file import journey_entries

    source = run.header.get("journey_source") or {}
    if not source.get("file") or not (run.path / source["file"]).is_file():
        return None
    try:
        entries = journey_entries(run.path / source["file"]).entries
    except UsageError:
        return None
    return next((e.settings for e in entries if e.name == name), None)
