"""Cross-validated levels: a recipe's validation level over folds of the training files (fold k holds out its own
10,000 images; fold 0 is the search's split), what they do to the calibration's offsets and to the confirmation
bar, and the focused study's candidates paired fold by fold with the layout they change (sections of
docs/search.md, from the JSON lines bench/front_study.py writes and the study exports)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.reports.render import seed_list
from tinymnist.reports.results_doc import HOLDS_SHARE
from tinymnist.search.analysis import by_recipe, recipe_key, trained

BASELINE = "band-4k-6k:10"  # the calibrated recipe (STUDY:TRIAL) whose recipe the fold study's candidates share
AIM = 0.03  # points: the spread of test - level offsets that would let a level choose at the margin of a pass


def read_folds(path: Path) -> list[dict]:
    """The finished jobs of a fold study, one per line."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a fold study's JSON lines ({e}).") from None


def cross_validated(folds: list[dict], exports: list[dict]) -> list[dict]:
    """Per recipe (every setting but the seed) of the fold study, its level on each fold with seed 1: folds 1..K
    from ``folds``, fold 0 from the export trial that screened the same recipe on the search's split, if any.
    Each: name, model, params, the recipe's key, per-fold levels, their mean and spread, seconds trained here, and
    (study, trials) when the recipe is a study's."""
    screened: dict[str, tuple] = {}  # recipe -> the screen of the study that re-scored it on the most seeds
    for e in exports:
        k = e["config"].get("last_k", 5)
        seeds = {n: len(g["levels"]) for g in by_recipe(e) for n in g["trials"]}
        for t in trained(e):
            if t["state"] == "complete" and t.get("seed") == 1 and not t.get("fold") and \
                    e["config"].get("validation", 10_000) == 10_000:
                key = recipe_key(t)
                if key not in screened or seeds.get(t["number"], 0) > screened[key][3]:
                    screened[key] = (e, t, statistics.fmean(t["val_acc"][-k:]), seeds.get(t["number"], 0))
    recipes: dict[str, dict] = {}
    for row in folds:
        key = recipe_key(row)
        r = recipes.setdefault(key, {"name": row["name"], "model": row["model"], "params": row["params"],
                                     "key": key, "levels": {}, "seconds": 0.0, "cpu": row["cpu"],
                                     "precision": row["precision"], "study": None})
        r["levels"][row["fold"]] = row["level"]
        r["seconds"] += row["seconds"]
        if key in screened and r["study"] is None:
            e, t, level, _ = screened[key]
            r["study"] = (e["study"], next(g["trials"] for g in by_recipe(e) if t["number"] in g["trials"]))
            r["levels"].setdefault(0, level)
    for r in recipes.values():
        levels = list(r["levels"].values())
        r["mean"] = statistics.fmean(levels)
        r["sd"] = statistics.stdev(levels) if len(levels) > 1 else 0.0
    return list(recipes.values())


def cv_calibration(recipes: list[dict], rows: list[dict]) -> list[dict]:
    """The calibrated recipes (calibration.calibration_rows) that have a cross-validated level over at least 3
    folds: per study, the fresh-seed test level (machines averaged, as the one-split rule does), the one-split
    level (mean over validation seeds) and the cross-validated one, and both offsets."""
    out = []
    for r in recipes:
        if r["study"] is None or len(r["levels"]) < 3:
            continue
        study, trials = r["study"]
        tests = [c for c in rows if c["study"] == study and c["val"]["trials"] == trials]
        if not tests:
            continue
        test = statistics.fmean(c["test_mean"] for c in tests)
        one = tests[0]["val"]
        out.append({"study": study, "recipe": r, "test": test, "one_split": one, "tests": tests,
                    "holds": all(c["passes"] >= HOLDS_SHARE * len(c["seeds"]) for c in tests),
                    "offset_one": test - one["mean"], "offset_cv": test - r["mean"]})
    return sorted(out, key=lambda c: c["recipe"]["params"])


def cv_bar(calibrated: list[dict]) -> dict | None:
    """The confirmation bar read through cross-validated levels, by the one-split rule's construction: the lowest
    test level of a calibrated recipe that holds, minus the smallest test - cross-validated offset."""
    holding = [c for c in calibrated if c["holds"]]
    if not holding:
        return None
    need = min(holding, key=lambda c: c["test"])
    offset = min(c["offset_cv"] for c in calibrated)
    return {"need": need, "offset": offset, "bar": need["test"] - offset,
            "spread_cv": max(c["offset_cv"] for c in calibrated) - offset,
            "spread_one": max(c["offset_one"] for c in calibrated) - min(c["offset_one"] for c in calibrated)}


def folds_lines(folds: list[dict], exports: list[dict], rows: list[dict], source: str, baseline: str) -> list[str]:
    """docs/search.md's cross-validation sections: the calibration through folds beside the one-split one, the
    bar it gives, and each candidate paired fold by fold with ``baseline`` (a calibrated recipe's study:trial
    name, e.g. band-4k-6k:10: the layout whose recipe the candidates share)."""
    recipes = cross_validated(folds, exports)
    calibrated = cv_calibration(recipes, rows)
    cpus = sorted({f"{r['precision']}, {r['cpu']}, one thread" for r in recipes})
    lines = ["## Cross-validated levels", "",
             f"Each recipe trained with seed 1 on three folds of the training files (fold k scores on its own "
             f"10,000 images and trains on the other 50,000; fold 0 is the search's split, read from the study "
             f"export; folds 1-2 from `{source}`, written by `python bench/front_study.py --out {source}`; "
             f"{'; '.join(cpus)}). The level is the mean of the last 5 validation epochs; the cross-validated "
             f"level is its mean over the folds.", ""]
    if calibrated:
        lines += ["| Recipe | Params | Level per fold (0, 1, 2) | Cross-validated level | One-split level (seeds) | "
                  "Fresh-seed test level | Holds | Test - one split | Test - cross-validated |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in calibrated:
            r, one = c["recipe"], c["one_split"]
            per = " ".join(f"{r['levels'][f]:.2f}" for f in sorted(r["levels"]))
            lines.append(f"| `{c['study']}` | {r['params']:,} | {per} | {r['mean']:.3f} ± {r['sd']:.3f} | "
                         f"{one['mean']:.3f} ({seed_list(sorted(one['levels']))}) | {c['test']:.3f} | "
                         f"{'yes' if c['holds'] else 'no'} | {c['offset_one']:+.3f} | {c['offset_cv']:+.3f} |")
        lines.append("")
    bar = cv_bar(calibrated)
    if bar:
        verdict = ("within" if bar["spread_cv"] <= AIM else "not within")
        lines += [f"Over these {len(calibrated)} recipes the test - level offsets spread over "
                  f"{bar['spread_one']:.3f} points with the one-split levels and {bar['spread_cv']:.3f} with the "
                  f"cross-validated ones: {verdict} the {AIM:.2f} points that would let a level choose at the "
                  f"margin of a pass. Read through cross-validated levels, the confirmation bar (the lowest "
                  f"test level of a calibrated recipe that holds, `{bar['need']['study']}` "
                  f"{bar['need']['test']:.3f}, minus the smallest offset, {bar['offset']:+.3f}) is "
                  f"**{bar['bar']:.3f}%**.", ""]
        below = ", ".join(f"`{c['study']}` ({c['recipe']['mean']:.3f})" for c in calibrated
                          if c["holds"] and c["recipe"]["mean"] < bar["bar"])
        by_cv = [c["study"] for c in sorted(calibrated, key=lambda c: -c["recipe"]["mean"])]
        by_test = [c["study"] for c in sorted(calibrated, key=lambda c: -c["test"])]
        order = ("in the same order as" if by_cv == by_test else "in another order than")
        lines += [f"Ranked by cross-validated level the calibrated recipes come {order} their fresh-seed test "
                  f"levels ({', '.join(by_cv)} against {', '.join(by_test)})."
                  + (f" A recipe that holds scores below the bar: {below}." if below else ""), ""]
    return lines + candidate_lines(folds, recipes, bar, baseline) + band_lines(recipes)


BANDS = ((4_001, 5_000), (5_001, 6_000))  # the bands under compact_step4's 7,432 that the fold study measured


def band_lines(recipes: list[dict]) -> list[str]:
    """Per band of parameters, the best cross-validated level (recipes with at least 3 folds) and the
    worker-hours the fold study spent there."""
    lines = ["### The best cross-validated level per band", "",
             "| Band (params) | Best cross-validated level | Recipe | Params | Recipes with 3 folds | "
             "Worker-hours (folds trained here) |", "|---|---|---|---|---|---|"]
    for low, high in BANDS:
        inside = [r for r in recipes if low <= r["params"] <= high]
        full = [r for r in inside if len(r["levels"]) >= 3]
        hours = sum(r["seconds"] for r in inside) / 3600
        if not full:
            lines.append(f"| {low:,}-{high:,} | none measured | | | 0 | {hours:.2f} |")
            continue
        best = max(full, key=lambda r: r["mean"])
        name = f"`{best['study'][0]}` trial {best['study'][1][0]}" if best["study"] else best["name"]
        lines.append(f"| {low:,}-{high:,} | {best['mean']:.3f} ± {best['sd']:.3f} | {name} (`{best['model']}`) | "
                     f"{best['params']:,} | {len(full)} | {hours:.2f} |")
    return lines + [""]


def candidate_lines(folds: list[dict], recipes: list[dict], bar: dict | None, baseline: str) -> list[str]:
    """The fold study's candidates (recipes of no study), each paired fold by fold with ``baseline``."""
    lines: list[str] = []
    base = next((r for r in recipes if r["study"] and f"{r['study'][0]}:{r['study'][1][0]}" == baseline), None)
    candidates = [r for r in recipes if r["study"] is None]
    if candidates:
        lines += [f"### Candidates, paired fold by fold with `{baseline}`", "",
                  f"Each candidate trains the recipe of `{baseline}` (its augmentation, weight averaging and "
                  f"one-cycle schedule) with one lever changed in the layout, at about its parameter count; the "
                  f"difference is taken fold by fold (same images, same seed).", "",
                  "| Candidate | Model | Params | Level per fold | Cross-validated level | Minus the baseline, "
                  "per fold | Mean difference | Clears the bar | Worker-hours |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(candidates, key=lambda r: -r["mean"]):
            clears = ("yes" if r["mean"] >= bar["bar"] else "no") if bar and len(r["levels"]) >= 3 else "not yet"
            per = " ".join(f"{f}: {r['levels'][f]:.2f}" for f in sorted(r["levels"]))
            paired = sorted(set(r["levels"]) & set(base["levels"])) if base else []
            diffs = [r["levels"][f] - base["levels"][f] for f in paired]
            lines.append(f"| {r['name']} | `{r['model']}` | {r['params']:,} | {per} | "
                         f"{r['mean']:.3f} ({len(r['levels'])} fold{'s' * (len(r['levels']) != 1)}) | "
                         f"{' '.join(f'{d:+.2f}' for d in diffs) or 'none'} | "
                         f"{f'{statistics.fmean(diffs):+.3f}' if diffs else ''} | "
                         f"{clears} | {r['seconds'] / 3600:.2f} |")
        lines += ["", f"Worker-hours of the fold study: {sum(r['seconds'] for r in recipes) / 3600:.2f} "
                  f"(folds of {len(folds)} trainings; fold-0 screens counted in their own studies).", ""]
    return lines
