"""Reading study exports and the analysis the live search uses too (which trials were screened, the best
recipes to re-score, the frontier): plain data in, plain data out. It never imports plotting or the docs
generator (reports/search_doc.py), so a search worker stays light."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.runs.records import RunRecord, recipe_from_dict
from tinymnist.targets import LAST_K, over_seeds

FINISHED = ("complete", "pruned")
SCORED = {"level": "level (mean)", "worst": "worst"}  # a study's score (SearchConfig.score) as the docs name it

# --- the study-export format and its upgrade -------------------------------------------------------------------
FORMAT = 2  # the study-export format search-export writes; upgrade_export reads every earlier one
# What studies did before a setting was recorded: format 1 is every export without "format" (0.4.x and earlier).
EARLIER_CONFIG = {"score": "worst", "design": 0}  # studies created by 0.3.0 or earlier: the worst, no design
EARLIER_TRIAL = {"prune_from": 3}  # trials of 0.3.0 or earlier carry no pruning window: cut from epoch 3 on


def upgrade_config(config: dict) -> dict:
    """A study's recorded settings (in an export or in its storage) in the current format."""
    return {**EARLIER_CONFIG, **config}


def upgrade_trial_attrs(attrs: dict) -> dict:
    """A live trial's user attributes in the current format (the pruner reads them)."""
    return {**EARLIER_TRIAL, **attrs}


def upgrade_export(data: dict) -> dict:
    """A study export of any format in the current one, every compatibility branch here. Format 1 to 2: the
    config gains what its study did before a setting existed (EARLIER_CONFIG); each trial its seed (before 0.4.0
    a trial recorded none: its recipe's, else the study's) and its fold (none before folds: 0, the search's
    split). An export in the current format is returned as it is; search-export writes its study through this
    too, so a study made by an earlier version is exported in the current format."""
    if data.get("format", 1) >= FORMAT:
        return data
    config = upgrade_config(data["config"])
    trials = [{"fold": None, **t, "seed": t.get("seed") or (t.get("recipe") or {}).get("seed") or config["seed"]}
              for t in data["trials"]]
    return {**data, "format": FORMAT, "config": config, "trials": trials}


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a study's runs live in a folder of this name


def _checked_export(data: dict, path: Path) -> dict:
    """A study export from anywhere, upgraded, with the shape the readers rely on: a study name that is a plain
    folder name (its runs are written under it), a settings object, trials that are objects with a number and a
    recipe object; anything else is one sentence naming the file."""
    study, trials = data.get("study"), data.get("trials")
    if not isinstance(study, str) or not STUDY_NAME.fullmatch(study) or ".." in study:
        raise UsageError(f"{path}: the study name {study!r} is not a plain name (letters, digits, '.', '_', '-'); "
                         f"the export is damaged or not one tinymnist wrote.")
    if not isinstance(data["config"], dict) or not isinstance(trials, list) or not all(
            isinstance(t, dict) and isinstance(t.get("number"), int) and isinstance(t.get("recipe") or {}, dict)
            for t in trials):
        raise UsageError(f"{path}: its config or trials are not what tinymnist search-export writes (an object, "
                         f"and a list of trials each with a number and a recipe object); the export is damaged.")
    try:
        return upgrade_export(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{path}: the export cannot be read ({type(e).__name__}: {e}); it is damaged.") from None


def read_exports(paths: list[Path]) -> list[dict]:
    exports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist; give a study export (tinymnist search-export writes one).") \
                from None
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is not a readable study export ({e}).") from None
        if not isinstance(data, dict) or "trials" not in data or "config" not in data:
            raise UsageError(f"{path} is not a study export (no trials); tinymnist search-export writes one.")
        exports.append({**_checked_export(data, path), "path": str(path)})
    if not exports:
        raise UsageError("no study exports given; tinymnist search-export writes them (evidence/studies/*.json).")
    return exports


def space_flag(model: str | None) -> str:
    """`` --space FILE.py:NAME`` when ``model`` is built by a space file (search-confirm runs one only when it is
    named), else nothing: what a search-confirm command shown in the docs needs to run."""
    if not model or ".py:" not in model:
        return ""
    path, _, rest = model.rpartition(".py:")
    return f" --space {path}.py:{rest.partition(':')[0]}"


def trained(export: dict) -> list[dict]:
    """The trials that trained (complete or pruned; not the samples over the parameter budget)."""
    return [t for t in export["trials"] if t["state"] in FINISHED and not t["over_budget"] and t["val_acc"]]


def screens(export: dict) -> list[dict]:
    """The trained trials that screen a recipe (on the study's seed); not the re-scoring trials, which train a
    chosen recipe again on other seeds and rank it only through their mean (by_recipe)."""
    return [t for t in trained(export) if t.get("rescore_of") is None]


def trial_of(run: RunRecord) -> tuple[str, int] | None:
    """(study, trial) when ``run`` trains a searched trial's own recipe (its header's origin); None for any other
    run, and for a lever measured on a trial's recipe (overrides beyond the seed)."""
    header = run.header()
    origin = header.get("origin")
    if not origin or set(header.get("overrides") or {}) - {"seed"}:
        return None
    return origin["study"], origin["trial"]


def confirmations(export: dict, root: Path) -> dict[int, dict]:
    """Per confirmed trial of ``export``'s study: over_seeds figures of its finished runs under ``root`` (runs
    whose header names the study and trial as their origin)."""
    by_trial: dict[int, list[RunRecord]] = {}
    for path in sorted(root.glob("**/summary.json")):
        run = RunRecord(path.parent)
        of = trial_of(run)
        if of and of[0] == export["study"]:
            by_trial.setdefault(of[1], []).append(run)
    found = {}
    for trial, every in sorted(by_trial.items()):
        # one machine and precision: a trial trained again elsewhere on the same seeds (a lever's baseline arm)
        # is a row of results.md, not more seeds; the confirmation is its largest such set of runs
        machines: dict[tuple, list[RunRecord]] = {}
        for r in every:
            summary = r.summary()
            machines.setdefault((summary.get("precision"), summary.get("threads"), summary.get("cpu")), []).append(r)
        runs = max(machines.values(), key=len)
        runs.sort(key=lambda r: r.recipe().seed)
        seeds = [r.recipe().seed for r in runs]
        figures = over_seeds(seeds, [r.metrics() for r in runs], runs[0].summary()["params"],
                             export["config"].get("last_k", LAST_K))
        figures["wall_seconds"] = sorted(r.summary()["wall_seconds"] for r in runs)
        how = {(r.summary().get("precision"), r.summary().get("threads")) for r in runs}
        figures["flags"] = "" if len(how) != 1 else " ".join(
            f"--{k} {v}" for k, v in zip(("precision", "threads"), next(iter(how)), strict=True) if v)
        found[trial] = figures
    return found


def recipe_key(t: dict) -> str:
    """What makes two trials the same recipe: every setting but the seed, a setting added since a trial was
    exported read as its default (a screen exported before ``elastic`` existed is the same recipe as its
    re-scoring trials, which record ``elastic = 0``)."""
    settings = dataclasses.asdict(recipe_from_dict(t["recipe"]))
    return json.dumps({k: v for k, v in settings.items() if k != "seed"}, sort_keys=True)


def fold_of(t: dict) -> int:
    """The fold of the training files a trial held out (fold 0, the search's split, unless it says another)."""
    return t.get("fold") or 0


def by_recipe(export: dict) -> list[dict]:
    """The complete trials grouped by recipe (every setting but the seed), each with the level (mean of the last
    K validation epochs) of every seed it trained on fold 0, their mean and spread, ranked by mean level, so that a
    recipe's rank is its own and not one lucky draw's. A recipe trained on further folds (search-rescore --folds)
    also has the level of each fold at the study's seed (``folds``, fold 0 its screen), their mean and spread
    (``fold_mean``, ``fold_sd``): kept apart from the seeds, which all score on fold 0."""
    export = upgrade_export(export)
    k, first = export["config"].get("last_k", LAST_K), export["config"]["seed"]
    groups: dict[str, dict] = {}
    for t in trained(export):
        if t["state"] != "complete":
            continue
        g = groups.setdefault(recipe_key(t), {"model": t["model"], "n_params": t["n_params"], "trials": [],
                                               "levels": {}, "screen": None, "folds": {}, "fold_trials": []})
        seed, fold, level = t["seed"], fold_of(t), statistics.fmean(t["val_acc"][-k:])
        if fold:
            g["fold_trials"].append(t["number"])
            g["folds"].setdefault(fold, level)
            continue
        g["trials"].append(t["number"])
        # a seed trained twice (a failed trial's retry of a point TPE had sampled before) keeps its first trial
        g["levels"].setdefault(seed, level)
        if seed == first and g["screen"] is None:
            g["screen"] = t["number"]
    for g in groups.values():
        levels = list(g["levels"].values())
        g["mean"] = statistics.fmean(levels)
        g["sd"] = statistics.stdev(levels) if len(levels) > 1 else 0.0
        if g["folds"] and first in g["levels"]:
            g["folds"][0] = g["levels"][first]
        folds = [g["folds"][f] for f in sorted(g["folds"])]
        g["folds"] = dict(sorted(g["folds"].items()))
        g["fold_mean"] = statistics.fmean(folds) if folds else None
        g["fold_sd"] = statistics.stdev(folds) if len(folds) > 1 else None
    return sorted(groups.values(), key=lambda g: (-g["mean"], -len(g["levels"])))


def rescore_plan(export: dict, top: int, seeds: list[int], folds: int = 1) -> list[tuple[dict, dict]]:
    """(parameters, user attributes) of the trials that re-score the ``top`` best screened recipes (complete
    trials of the study's own seed on fold 0, best value first, one per recipe) on each of ``seeds``, and on
    folds 1 to ``folds`` - 1 at the study's seed (fold 0 is the screen), leaving out the pairs already trained or
    waiting (a pair that was pruned is queued again: it measured nothing)."""
    export = upgrade_export(export)
    first = export["config"]["seed"]
    screened = sorted((t for t in trained(export) if t["state"] == "complete" and t["seed"] == first
                       and not fold_of(t)), key=lambda t: -t["value"])
    chosen, keys = [], set()
    for t in screened:
        if recipe_key(t) not in keys and len(chosen) < top:
            keys.add(recipe_key(t))
            chosen.append(t)
    have = {(t.get("rescore_of"), t.get("seed"), fold_of(t)) for t in export["trials"]
            if t["state"] not in ("fail", "pruned")}
    pairs = [(s, 0) for s in seeds if s != first] + [(first, f) for f in range(1, folds)]
    return [(t["params"], {"seed": s, "rescore_of": t["number"], **({"fold": f} if f else {})})
            for t in chosen for s, f in pairs if (t["number"], s, f) not in have]


def pareto(trials: list[dict]) -> list[dict]:
    """Complete trials that no other complete trial beats with as few parameters or fewer."""
    done = sorted((t for t in trials if t["state"] == "complete"), key=lambda t: (t["n_params"], -t["value"]))
    front, best = [], float("-inf")
    for t in done:
        if t["value"] > best:
            front.append(t)
            best = t["value"]
    return front


def ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (nan when either is constant)."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def screen_ranking(export: dict, epochs: tuple[int, ...]) -> dict | None:
    """How well a screen cut short after epoch e would have ranked the study's complete screening trials of its
    longest length: Spearman's rho between each trial's validation accuracy after epoch e and its score (the
    level of its last K epochs), for each e before the scored epochs. None with fewer than 6 such trials.
    Pruned trials have no score and are left out, so the trials compared are the better ones."""
    length = max(export["config"]["epochs"])
    last_k = export["config"].get("last_k", LAST_K)
    done = [t for t in screens(export) if t["state"] == "complete" and len(t["val_acc"]) == length]
    if len(done) < 6:
        return None
    levels = [statistics.mean(t["val_acc"][-last_k:]) for t in done]
    rho = {e: spearman([t["val_acc"][e - 1] for t in done], levels) for e in epochs if e <= length - last_k}
    return {"trials": len(done), "epochs": length, "last_k": last_k, "rho": rho}
