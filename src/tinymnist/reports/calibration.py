"""What a validation level means on the test set: the front of recipes by fresh-seed pass rate, the
calibration of validation levels against fresh-seed test levels, the confirmation bar derived from it and how
far each parameter band's best recipe is from that bar (sections of docs/search.md)."""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path

from tinymnist.reports.render import pass_count, seed_list
from tinymnist.reports.results_doc import HOLDS_SHARE, RunGroup, fresh_seeds_of
from tinymnist.reports.search_figures import pass_rate_figure
from tinymnist.runs.records import RunRecord, recipe_from_dict
from tinymnist.search.analysis import by_recipe, screens, trained, trial_of
from tinymnist.targets import LAST_K, TARGET, holds_last_k, over_seeds

FRONT_SEEDS = 5  # fresh seeds a recipe needs before it is placed against the others by pass rate


def pass_rates(groups: dict[RunGroup, dict[int, RunRecord]]) -> list[dict]:
    """Every recipe (step and overrides, precision, CPU) among ``groups`` (results_doc.run_groups) with at least
    FRONT_SEEDS fresh-seed runs on the full training set: its parameters, seeds and targets.over_seeds figures
    (passes and the 95% interval of the pass rate)."""
    rows = []
    for (name, flags, precision, cpu), runs in groups.items():
        seeds = fresh_seeds_of(runs)
        if len(seeds) < FRONT_SEEDS or "--subset" in flags:
            continue
        figures = over_seeds(seeds, [runs[s].metrics() for s in seeds], runs[seeds[0]].summary()["params"])
        rows.append({"label": f"{name}{' ' + flags if flags else ''}", "how": f"{precision}{', ' + cpu if cpu else ''}",
                     "params": figures["params"], "passes": figures["seeds_passing"], "runs": len(seeds),
                     "interval": figures["pass_interval"], "figures": figures, "seeds": seeds,
                     "taught": bool(runs[seeds[0]].recipe().teacher)})
    return sorted(rows, key=lambda r: (r["params"], -r["passes"] / r["runs"]))


def rate_front(rows: list[dict]) -> list[dict]:
    """The rows no recipe with as few parameters or fewer beats on pass rate. A recipe with a teacher is not on
    it: its teacher is training the exercise does not count (its row is shown, marked)."""
    front, best = [], -1.0
    for r in rows:  # sorted by parameters, best rate first
        if r.get("taught"):
            continue
        if r["passes"] / r["runs"] > best:
            front.append(r)
            best = r["passes"] / r["runs"]
    return front


def _settings(recipe: dict) -> dict:
    """A recipe's settings but its model and seed, with every field (exports before a field existed lack it)."""
    return {k: v for k, v in dataclasses.asdict(recipe_from_dict(recipe)).items() if k not in ("model", "seed")}


def calibration_rows(exports: list[dict], groups: dict[RunGroup, dict[int, RunRecord]],
                     subsets: bool = False) -> list[dict]:
    """Each recipe whose validation level was measured over seeds, beside its fresh-seed test level from the
    runs in ``groups`` (results_doc.run_groups): how far the validation protocol reads from the test. A
    one-recipe study (a one-point space, re-scored on further seeds) is matched with the runs of the same
    recipe (same settings and parameter count), whatever step they are runs of; in a study of many recipes, a
    recipe re-scored on at least RULE_SEEDS seeds is matched with the confirmation runs of its own trials (their
    header names the study and trial). Runs on a subset of the training images are left out unless ``subsets``
    (quick checks say nothing here), and so are runs with a lever (overrides beyond the seed)."""
    rows = []
    for export in exports:
        recipes = by_recipe(export)
        k = export["config"].get("last_k", LAST_K)
        for g in recipes:
            one = len(recipes) == 1
            if not one and len(g["levels"]) < RULE_SEEDS:
                continue
            if one:
                mine = _settings(next(t for t in trained(export) if t["number"] == g["trials"][0])["recipe"])
            for (name, flags, precision, cpu), runs in groups.items():
                seeds = fresh_seeds_of(runs)
                if not seeds or ("--subset" in flags and not subsets):
                    continue
                first = runs[seeds[0]]
                if one:
                    same = first.summary()["params"] == g["n_params"] and \
                        _settings(dataclasses.asdict(first.recipe())) == mine
                else:
                    of = trial_of(first)
                    same = of is not None and of[0] == export["study"] and of[1] in g["trials"]
                if not same:
                    continue
                test = [statistics.fmean(runs[s].test_accs()[-k:]) for s in seeds]
                rows.append({"study": export["study"], "val": g, "label": f"{name}{' ' + flags if flags else ''}",
                             "how": f"{precision}{', ' + cpu if cpu else ''}", "seeds": seeds,
                             "test_mean": statistics.fmean(test),
                             "passes": sum(holds_last_k(runs[s].test_accs(), k) for s in seeds)})
    return rows


def calibration_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Calibration: validation level against fresh-seed test level", "",
             "Recipes whose fresh-seed test outcome is committed, run through the search's own protocol (a "
             "one-point study, `--space FILE.py:NAME`, re-scored with `tinymnist search-rescore`), and searched "
             f"recipes re-scored on at least {RULE_SEEDS} seeds whose own trial was then confirmed: the level "
             "(mean of the last K epochs) on the validation split, per seed, beside the same recipe's level on "
             "the test set over its fresh seeds. The difference is the offset a validation level must be read "
             "with; the spread over validation seeds is how far one seed can mislead.", "",
             "| Study | Recipe (test runs) | Params | Validation seeds | Validation level per seed | Mean ± sd | "
             "Test fresh seeds | Test level (mean) | Seeds passing | Test - validation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["val"]
        seeds = sorted(g["levels"])
        levels = " ".join(f"{g['levels'][x]:.2f}" for x in seeds)
        lines.append(f"| `{r['study']}` | `{r['label']}`, {r['how']} | {g['n_params']:,} | {seed_list(seeds)} | "
                     f"{levels} | {g['mean']:.3f} ± {g['sd']:.3f} | {seed_list(r['seeds'])} | {r['test_mean']:.3f} "
                     f"| {r['passes']} of {len(r['seeds'])} | {r['test_mean'] - g['mean']:+.3f} |")
    return lines + [""]


RULE_SEEDS = 4  # validation seeds a recipe needs: to calibrate the rule, and to be judged by it


def confirm_rule(rows: list[dict]) -> dict | None:
    """When a searched recipe is worth its fresh-seed confirmation, from the calibration (calibration_rows):
    ``need`` is the lowest test level (mean of the last K epochs over fresh seeds) of a calibrated recipe that
    holds on at least 90% of them; ``offset`` the smallest test - validation difference of the calibrated recipes
    (a study's test runs averaged first): the validation read as favourably as it ever did. A recipe is worth
    confirming when its mean validation level over RULE_SEEDS seeds reaches ``bar`` = need - offset.
    None until the calibration has a recipe that holds and RULE_SEEDS validation seeds."""
    usable = [r for r in rows if len(r["val"]["levels"]) >= RULE_SEEDS]
    holding = [r for r in usable if r["passes"] >= HOLDS_SHARE * len(r["seeds"])]
    if not holding:
        return None
    per_study: dict[str, list[float]] = {}
    for r in usable:
        per_study.setdefault(r["study"], []).append(r["test_mean"] - r["val"]["mean"])
    offsets = {study: statistics.fmean(d) for study, d in per_study.items()}
    need = min(holding, key=lambda r: r["test_mean"])
    offset = min(offsets.values())
    return {"need": need["test_mean"], "need_from": need, "offset": offset, "offsets": offsets,
            "bar": need["test_mean"] - offset}


BANDS = (4_000, 5_000, 6_000)  # the bands the search aims at, beside the studies' own budgets


def bands(exports: list[dict]) -> list[dict]:
    """Per parameter band (BANDS and the studies' budgets, ascending: up to the first, then up to each next),
    the best recipe by mean validation level over at least RULE_SEEDS seeds, the best single screened trial, and
    the worker-hours every study spent training trials of that size."""
    edges = sorted({e["config"]["max_params"] for e in exports} | set(BANDS))
    rows, recipes = [], [(g, e) for e in exports for g in by_recipe(e)]
    for low, high in zip([0, *edges], edges, strict=False):
        groups = [(g, e) for g, e in recipes if low < g["n_params"] <= high]
        rated = [(g, e) for g, e in groups if len(g["levels"]) >= RULE_SEEDS]
        screened = [(t, e) for e in exports for t in screens(e) if t["state"] == "complete"
                    and low < t["n_params"] <= high]
        if not screened:
            continue
        k = lambda te: statistics.fmean(te[0]["val_acc"][-te[1]["config"].get("last_k", LAST_K):])  # noqa: E731
        rows.append({"low": low, "high": high, "rated": max(rated, key=lambda ge: ge[0]["mean"], default=None),
                     "screen": max(screened, key=k, default=None),
                     "screen_level": max(map(k, screened), default=None),
                     "trained": sum(len(g["levels"]) for g, _ in groups),
                     "hours": sum(t["seconds"] or 0 for e in exports for t in trained(e)
                                  if low < t["n_params"] <= high) / 3600})
    return rows


def strictness_lines(rule: dict, rows: list[dict]) -> list[str]:
    """A sentence when the calibration contradicts its own bar: a calibrated recipe that holds scores below it
    on validation (the offsets differ between recipes by more than the bar's margin)."""
    below = {r["label"]: r for r in rows if len(r["val"]["levels"]) >= RULE_SEEDS
             and r["val"]["mean"] < rule["bar"] - 5e-4 and r["passes"] >= HOLDS_SHARE * len(r["seeds"])}
    if not below:
        return []
    spread = max(rule["offsets"].values()) - min(rule["offsets"].values())
    names = ", ".join(f"`{label}` ({r['val']['mean']:.3f}, {r['val']['mean'] - rule['bar']:+.3f})"
                      for label, r in below.items())
    return [f"The bar is strict, by the calibration's own evidence: recipes that hold on fresh test seeds score "
            f"below it on validation - {names}. The test - validation offsets of the calibrated recipes differ "
            f"by {spread:.3f} points, so the validation split does not rank architectures as the test set does "
            f"to within the margin that decides a pass; a recipe that clears the bar is one whose validation "
            f"level would predict holding even under the least favourable offset seen.", ""]


def rule_lines(exports: list[dict], rows: list[dict], confirmed: dict[str, dict[int, dict]]) -> list[str]:
    """The rule for what is worth confirming, derived from the calibration, how far each parameter band's best
    recipe is from it, and what its fresh-seed confirmation (``confirmed``: per study, per trial) found."""
    rule = confirm_rule(rows)
    if rule is None:
        return []
    n = rule["need_from"]
    offsets = ", ".join(f"`{s}` {o:+.3f}" for s, o in rule["offsets"].items())
    lines = ["## Worth confirming: the rule, and how far each parameter band is", "",
             f"Derived from the calibration above, and applied to every study: a searched recipe is confirmed on "
             f"ten fresh test seeds (seeds nobody has used) only when its mean validation level over {RULE_SEEDS} "
             f"seeds (screen seed and `tinymnist search-rescore --seeds 2,3,4`) reaches the confirmation bar, "
             f"**{rule['bar']:.3f}%**. That bar is "
             f"the lowest test level of a calibrated recipe that holds on at least {HOLDS_SHARE:.0%} of its fresh "
             f"seeds (`{n['label']}`, {n['how']}: {n['test_mean']:.3f}, {n['passes']} of {len(n['seeds'])}) minus "
             f"the smallest test - validation offset of the calibrated recipes ({offsets}; the smallest: the "
             f"validation read as favourably as it ever did). A recipe below it is not confirmed: the calibration "
             f"says its test level would fall short of what holding takes. The bar moves when the calibration "
             f"gains recipes; this section is regenerated with it.", "",
             *strictness_lines(rule, rows),
             "| Params | Best recipe over seeds (validation) | Mean level ± sd | Predicted test level | "
             "Mean level - confirmation bar | Fresh test seeds passing | Best single screen (level) | "
             "Worker-hours (trained trials of this size, every study) |", "|---|---|---|---|---|---|---|---|"]
    for b in bands(exports):
        band = f"{b['low'] + 1:,}-{b['high']:,}"
        if b["rated"]:
            g, e = b["rated"]
            rated = (f"`{e['study']}` trial {g['screen'] if g['screen'] is not None else g['trials'][0]}, "
                     f"{g['n_params']:,} params, seeds {seed_list(sorted(g['levels']))}")
            level = f"{g['mean']:.3f} ± {g['sd']:.3f}"
            predicted = f"{g['mean'] + rule['offset']:.3f}"
            distance = f"{g['mean'] - rule['bar']:+.3f}"
            figures = next((confirmed[e["study"]][n] for n in g["trials"] if n in confirmed.get(e["study"], {})), None)
            # a confirmed trial, or the same recipe's fresh-seed runs found by the calibration (a one-point study)
            same = [f"{r['passes']} of {len(r['seeds'])} (`{r['label']}`, {r['how']})" for r in rows
                    if r["study"] == e["study"] and r["val"]["trials"] == g["trials"]]
            passing = (f"{pass_count(figures)}, seeds {seed_list([s['seed'] for s in figures['seeds']])}" if figures
                       else "; ".join(same) or "not confirmed")
        else:
            rated, level, predicted, distance, passing = f"none with {RULE_SEEDS} seeds", "", "", "", ""
        t, e = b["screen"] if b["screen"] else (None, None)
        screen = (f"{b['screen_level']:.2f} (`{e['study']}` trial {t['number']}, {t['n_params']:,} params)"
                  if t else "")
        lines.append(f"| {band} | {rated} | {level} | {predicted} | {distance} | {passing} | {screen} | "
                     f"{b['hours']:.2f} |")
    return lines + [""]


def front_lines(root: Path, groups: dict[RunGroup, dict[int, RunRecord]], figure: Path, out: Path) -> list[str]:
    rows = pass_rates(groups)
    if not rows:
        return []
    front = rate_front(rows)
    pass_rate_figure(rows, front, figure)
    lines = ["## The frontier: parameters against pass rate", "",
             f"Every recipe with at least {FRONT_SEEDS} fresh-seed runs on the full training set under `{root}/` "
             f"(steps, their variants and confirmed trials alike), judged on the test set: a seed passes when it "
             f"holds {TARGET} in each of its last {LAST_K} epochs. On the front: the recipes no recipe with as few "
             f"parameters or fewer beats on pass rate. The search's own scores (validation) are in the studies "
             f"below; this is what the recipes it and the journeys chose did on seeds nobody had looked at.", "",
             f"![Parameters against fresh-seed pass rate]({os.path.relpath(figure, out.parent)})", "",
             "| Recipe | Trained with | Params | Fresh seeds | Seeds passing | On the front |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['label']}` | {r['how']} | {r['params']:,} | {seed_list(r['seeds'])} | "
                     f"{pass_count(r['figures'])} | "
                     f"{'yes' if r in front else 'no: trained with a teacher' if r['taught'] else ''} |")
    return lines + [""]
