"""docs/search.md and its frontier figure, from committed study exports (``tinymnist search-export``) and the
confirmation runs of chosen trials (``tinymnist search-confirm``). Reads no study storage and trains nothing, so
the document regenerates anywhere from the repository alone."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections import Counter
from pathlib import Path

from matplotlib.figure import Figure

from tinymnist.errors import UsageError
from tinymnist.reports.render import pass_count, seed_list
from tinymnist.reports.results_doc import RunGroup, fresh, run_groups
from tinymnist.runs.records import RunRecord, recipe_from_dict
from tinymnist.search.analysis import SCORED, by_recipe, confirmations, pareto, screens, trained
from tinymnist.search.space import SearchConfig, builtin_2_architectures, builtin_architectures
from tinymnist.targets import LAST_K, TARGET, TARGET_ACC, holds_last_k, over_seeds


def frontier_figure(exports: list[dict], confirmed: dict[str, dict[int, dict]], path: Path) -> None:
    """Parameters vs accuracy: every trained trial (its value: the level or the worst of its last K validation
    epochs, as its study scores; a pruned trial at
    its last epoch, hollow), and each confirmed trial's test accuracy over fresh seeds (mean, min-max bar)."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    markers = "osD^v<>"
    values = [t["value"] for e in exports for t in trained(e) if t["state"] == "complete"]
    low = max(97.0, min(values, default=97.0) - 0.2)
    for i, export in enumerate(exports):
        done = trained(export)
        complete = [t for t in done if t["state"] == "complete"]
        pruned = [t for t in done if t["state"] == "pruned"]
        if complete:
            ax.scatter([t["n_params"] for t in complete], [t["value"] for t in complete], marker=markers[i % 7],
                       s=28, alpha=0.8, label=f"{export['study']}: complete (validation)")
        if pruned:
            ax.scatter([t["n_params"] for t in pruned], [max(t["val_acc"][-1], low + 0.03) for t in pruned],
                       marker=markers[i % 7], s=28, facecolors="none", edgecolors="gray", alpha=0.7,
                       label=f"{export['study']}: pruned (validation, last epoch)")
        for number, figures in confirmed.get(export["study"], {}).items():
            finals = [s["final"] for s in figures["seeds"]]
            mean = sum(finals) / len(finals)
            ax.errorbar([figures["params"]], [mean], yerr=[[mean - min(finals)], [max(finals) - mean]],
                        fmt="*", color="crimson", markersize=14, capsize=4, zorder=5)
            ax.annotate(f"trial {number}: {figures['seeds_passing']}/{figures['seeds_run']} fresh seeds pass",
                        (figures["params"], mean), textcoords="offset points", xytext=(8, -14), fontsize=8,
                        color="crimson")
    ax.errorbar([], [], fmt="*", color="crimson", markersize=10, label="confirmed: test acc over fresh seeds")
    ax.axhline(TARGET_ACC, color="gray", linestyle="--", label=f"{TARGET} target (test)")
    ax.set(xlabel="parameters", ylabel="accuracy (%)", ylim=(low, 99.8),
           title="Search trials: value (level or worst of the last K epochs) on the validation split\n(pruned "
                 "trials below the "
                 "axis are drawn on its bottom edge)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


FRONT_SEEDS = 5  # fresh seeds a recipe needs before it is placed against the others by pass rate


def pass_rates(groups: dict[RunGroup, dict[int, RunRecord]]) -> list[dict]:
    """Every recipe (step and overrides, precision, CPU) among ``groups`` (results_doc.run_groups) with at least
    FRONT_SEEDS fresh-seed runs on the full training set: its parameters, seeds and targets.over_seeds figures
    (passes and the 95% interval of the pass rate)."""
    rows = []
    for (name, flags, precision, cpu), runs in groups.items():
        seeds = fresh(runs)
        if len(seeds) < FRONT_SEEDS or "--subset" in flags:
            continue
        figures = over_seeds(seeds, [runs[s].metrics() for s in seeds], runs[seeds[0]].summary()["params"])
        rows.append({"label": f"{name}{' ' + flags if flags else ''}", "how": f"{precision}{', ' + cpu if cpu else ''}",
                     "params": figures["params"], "passes": figures["seeds_passing"], "runs": len(seeds),
                     "interval": figures["pass_interval"], "figures": figures, "seeds": seeds})
    return sorted(rows, key=lambda r: (r["params"], -r["passes"] / r["runs"]))


def rate_front(rows: list[dict]) -> list[dict]:
    """The rows no recipe with as few parameters or fewer beats on pass rate."""
    front, best = [], -1.0
    for r in rows:  # sorted by parameters, best rate first
        if r["passes"] / r["runs"] > best:
            front.append(r)
            best = r["passes"] / r["runs"]
    return front


def pass_rate_figure(rows: list[dict], front: list[dict], path: Path) -> None:
    """Parameters against the fresh-seed pass rate, with each rate's 95% interval; the front joined."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for r in rows:
        rate, (low, high) = 100 * r["passes"] / r["runs"], r["interval"]
        on = r in front
        ax.errorbar([r["params"]], [rate], yerr=[[rate - 100 * low], [100 * high - rate]], fmt="o" if on else ".",
                    color="crimson" if on else "gray", capsize=3, alpha=0.9 if on else 0.5)
        if on:
            ax.annotate(f"{r['label']} ({r['passes']}/{r['runs']})", (r["params"], rate), textcoords="offset points",
                        xytext=(6, -12), fontsize=7, color="crimson")
    ax.plot([r["params"] for r in front], [100 * r["passes"] / r["runs"] for r in front], color="crimson",
            drawstyle="steps-post", alpha=0.5)
    ax.set(xscale="log", xlabel="parameters", ylabel=f"seeds holding {TARGET} in each of the last {LAST_K} epochs (%)",
           ylim=(-5, 105), title="Recipes on fresh seeds (test set): pass rate with its 95% interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _settings(recipe: dict) -> dict:
    """A recipe's settings but its model and seed, with every field (exports before a field existed lack it)."""
    return {k: v for k, v in dataclasses.asdict(recipe_from_dict(recipe)).items() if k not in ("model", "seed")}


def calibration_rows(exports: list[dict], groups: dict[RunGroup, dict[int, RunRecord]],
                     subsets: bool = False) -> list[dict]:
    """For each one-recipe study (every complete trial the same recipe: a one-point space, re-scored on further
    seeds), its validation level over seeds beside the fresh-seed test level of the same recipe (same settings
    and parameter count) from the runs in ``groups`` (results_doc.run_groups): how far the validation protocol reads
    from the test.
    Runs on a subset of the training images are left out unless ``subsets`` (quick checks say nothing here)."""
    rows = []
    for export in exports:
        recipes = by_recipe(export)
        if len(recipes) != 1:
            continue
        g = recipes[0]
        trial = next(t for t in trained(export) if t["number"] == g["trials"][0])
        mine = _settings(trial["recipe"])
        for (name, flags, precision, cpu), runs in groups.items():
            seeds = fresh(runs)
            first = runs[seeds[0]] if seeds else None
            if not seeds or ("--subset" in flags and not subsets) or first.summary()["params"] != g["n_params"] or \
                    _settings(dataclasses.asdict(first.recipe())) != mine:
                continue
            k = export["config"].get("last_k", LAST_K)
            test = [statistics.fmean(runs[s].test_accs()[-k:]) for s in seeds]
            rows.append({"study": export["study"], "val": g, "label": f"{name}{' ' + flags if flags else ''}",
                         "how": f"{precision}{', ' + cpu if cpu else ''}", "seeds": seeds,
                         "test_mean": statistics.fmean(test), "passes": sum(holds_last_k(runs[s].test_accs(), k)
                                                                            for s in seeds)})
    return rows


def calibration_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Calibration: validation level against fresh-seed test level", "",
             "Recipes whose fresh-seed test outcome is committed, run through the search's own protocol (a "
             "one-point study, `--space FILE.py:NAME`, re-scored with `tinymnist search-rescore`): the level "
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


HOLDS_SHARE = 0.9  # a recipe holds when at least this share of its fresh seeds pass (9 of 10)
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


def bands(exports: list[dict]) -> list[dict]:
    """Per parameter band (the studies' budgets, ascending: up to the first, then up to each next), the best
    recipe by mean validation level over at least RULE_SEEDS seeds and the best single screened trial."""
    edges = sorted({e["config"]["max_params"] for e in exports})
    rows = []
    for low, high in zip([0, *edges], edges, strict=False):
        groups = [(g, e) for e in exports for g in by_recipe(e) if low < g["n_params"] <= high]
        rated = [(g, e) for g, e in groups if len(g["levels"]) >= RULE_SEEDS]
        screened = [(t, e) for e in exports for t in screens(e) if t["state"] == "complete"
                    and low < t["n_params"] <= high]
        if not screened:
            continue
        k = lambda te: statistics.fmean(te[0]["val_acc"][-te[1]["config"].get("last_k", LAST_K):])  # noqa: E731
        rows.append({"low": low, "high": high, "rated": max(rated, key=lambda ge: ge[0]["mean"], default=None),
                     "screen": max(screened, key=k, default=None),
                     "screen_level": max(map(k, screened), default=None),
                     "trained": sum(len(g["levels"]) for g, _ in groups)})
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


def rule_lines(exports: list[dict], rows: list[dict]) -> list[str]:
    """The rule for what is worth confirming, derived from the calibration, and how far each parameter band's
    best recipe is from it."""
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
             "Mean level - confirmation bar | Best single screen (level) |", "|---|---|---|---|---|---|"]
    for b in bands(exports):
        band = f"{b['low'] + 1:,}-{b['high']:,}"
        if b["rated"]:
            g, e = b["rated"]
            rated = (f"`{e['study']}` trial {g['screen'] if g['screen'] is not None else g['trials'][0]}, "
                     f"{g['n_params']:,} params, seeds {seed_list(sorted(g['levels']))}")
            level = f"{g['mean']:.3f} ± {g['sd']:.3f}"
            predicted = f"{g['mean'] + rule['offset']:.3f}"
            distance = f"{g['mean'] - rule['bar']:+.3f}"
        else:
            rated, level, predicted, distance = f"none with {RULE_SEEDS} seeds", "", "", ""
        t, e = b["screen"] if b["screen"] else (None, None)
        screen = (f"{b['screen_level']:.2f} (`{e['study']}` trial {t['number']}, {t['n_params']:,} params)"
                  if t else "")
        lines.append(f"| {band} | {rated} | {level} | {predicted} | {distance} | {screen} |")
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
                     f"{'yes' if r in front else ''} |")
    return lines + [""]


def settings_text(trial: dict) -> str:
    r = trial["recipe"]
    aug = f"rotate ±{r['rotate']:g}°, shift ±{r['shift']:g}, zoom ±{r['scale']:g}" if r["rotate"] else "none"
    ema = f", weight average (decay {r['ema']:g})" if r.get("ema") else ""
    return (f"{r['epochs']} epochs (LR cycle {r['cycle_epochs'] or r['epochs']}), batch {r['batch_size']}, peak LR "
            f"{r['lr']:.3g}, augmentation {aug}{ema}")


def search_command(export: dict) -> str:
    c = export["config"]
    parts = [f"tinymnist search --study {export['study']} --max-params {c['max_params']}"]
    if c["space"] != "builtin-2":
        parts.append(f"--space {c['space']}")
    parts.append(f"--epochs {','.join(map(str, c['epochs']))}")
    if c["validation"] != 10_000:
        parts.append(f"--validation {c['validation']}")
    if c.get("train_size"):
        parts.append(f"--subset {c['train_size']}")
    if c["seed"] != 1:
        parts.append(f"--seed {c['seed']}")
    if c.get("precision", "auto") != "auto":  # the precision the trials trained in, named so that they do again
        parts.append(f"--precision {c['precision']}")
    config = SearchConfig.from_attrs(c)  # what a study made before a setting existed did: given, to ask the same
    if config.score != SearchConfig.score:
        parts.append(f"--score {config.score}")
    if config.design != SearchConfig.design:
        parts.append(f"--design {config.design}")
    done = len(screens(export))
    parts.append(f"--trials {done} --workers 2")
    return " ".join(parts)


def trial_row(t: dict) -> str:
    how = " (design)" if t.get("design") else " (enqueued)" if t.get("enqueued") else ""
    return (f"| {t['number']}{how} | {t['n_params']:,} | `{t['model']}` | "
            f"{settings_text(t)} | {t['value']:.2f} | {t['seconds']:.0f} |")


TRIALS_HEAD = ["| Trial | Params | Model | Recipe | Validation value | Trial seconds |",
               "|---|---|---|---|---|---|"]


def bar_lines(done: list[dict], bar: tuple[str, float]) -> list[str]:
    """The complete trials at or above the validation score of study ``bar[0]``, fastest first."""
    name, value = bar
    over = sorted((t for t in done if t["state"] == "complete" and t["value"] >= value), key=lambda t: t["seconds"])
    head = (f"Trials at or above the bar - a validation score of at least {value:.2f}%, study `{name}`'s - fastest "
            f"first (trial seconds were measured with two workers sharing the cores, so they rank trials; the "
            f"benchmark times a choice alone):")
    if not over:
        return ["", f"No trial reached the bar (a validation score of at least {value:.2f}%, study `{name}`'s)."]
    return ["", head, "", *TRIALS_HEAD, *map(trial_row, over)]


def exploration_lines(export: dict) -> list[str]:
    """How much of the space a study saw: architectures trained (and, for the built-in space, how many there are
    in budget), trials per architecture, the initial design, and the epochs trials were pruned after."""
    done = screens(export)
    arch = Counter(t["model"] for t in done)
    if not arch:
        return []
    c = export["config"]
    count = {"builtin": builtin_architectures, "builtin-2": builtin_2_architectures}.get(c["space"])
    in_budget = (f" of the {count(c['max_params']):,} the space `{c['space']}` has within {c['max_params']:,} "
                 f"parameters" if count else "")
    per = sorted(arch.values())
    design = sum(t.get("design", False) for t in done)
    pruned = Counter(len(t["val_acc"]) for t in done if t["state"] == "pruned")
    return ["", f"Exploration: {len(arch)} architecture{'s' * (len(arch) != 1)} trained{in_budget}; trials per "
                f"architecture: median "
                f"{per[len(per) // 2]}, most {per[-1]}"
                + (f"; {design} trials of the initial design" if design else "")
                + "; pruned after epoch: "
                + (", ".join(f"{e} ({n})" for e, n in sorted(pruned.items())) if pruned else "none") + "."
                + compute_sentence(trained(export))]


def compute_sentence(done: list[dict]) -> str:
    """What the trained trials cost: worker-hours (their seconds summed, each trial on one worker), trained
    trials per worker-hour, and the median seconds of a trained epoch (training and its validation pass)."""
    timed = [t for t in done if t.get("seconds") and t["val_acc"]]
    if not timed:
        return ""
    hours = sum(t["seconds"] for t in timed) / 3600
    per_epoch = sorted(t["seconds"] / len(t["val_acc"]) for t in timed)
    return (f" Compute: {hours:.2f} worker-hours for {len(timed)} trained trial{'s' * (len(timed) != 1)}, "
            f"{len(timed) / hours:.1f} trials per worker-hour; {sum(len(t['val_acc']) for t in timed)} epochs trained, "
            f"{per_epoch[len(per_epoch) // 2]:.0f} s per epoch (median over trials).")


def study_section(export: dict, confirmed: dict[int, dict], top: int = 8,
                  bar: tuple[str, float] | None = None) -> list[str]:
    c = export["config"]
    done = screens(export)
    rescoring = [t for t in trained(export) if t.get("rescore_of") is not None]
    states = {s: sum(t["state"] == s for t in export["trials"] if t.get("rescore_of") is None)
              for s in ("complete", "pruned", "fail")}
    over = sum(t["over_budget"] for t in export["trials"])
    retried = sum(t["retry_of"] is not None for t in export["trials"])
    enqueued = [str(t["number"]) for t in export["trials"]
                if t.get("enqueued") and not t.get("design") and t.get("rescore_of") is None]
    best = sorted((t for t in done if t["state"] == "complete"), key=lambda t: -t["value"])[:top]
    cut = sum(t["state"] == "pruned" for t in rescoring)
    rescored = ""
    if rescoring:
        rescored = f" Besides, {len(rescoring)} re-scoring trial{'s' * (len(rescoring) != 1)} trained chosen " \
                   f"recipes again on other seeds"
        if cut:
            rescored += f" ({cut} of them cut by the pruner before re-scoring trials were exempt from it, and " \
                        f"trained again)"
        rescored += "."
    k = c.get("last_k", LAST_K)
    train = f"the first {c['train_size']:,}" if c.get("train_size") else "all the other"
    used = sorted({t["precision"] for t in done if t.get("precision")})
    precision = f"{c['precision']}: {', '.join(used)}" if used and used != [c["precision"]] else c["precision"]
    lines = [
        f"## Study `{export['study']}`", "",
        f"At most {c['max_params']:,} parameters; {', '.join(map(str, c['epochs']))} epochs; every trial trains "
        f"seed {c['seed']} on {train} training images and is scored on the last {c['validation']:,} (precision "
        f"{precision}). {len(done)} trial{'s' * (len(done) != 1)} trained: "
        f"{states['complete']} complete, {states['pruned'] - over} pruned; {over} sampled models were over the "
        f"budget and not trained; {states['fail']} failed ({retried} retries).{rescored} Optuna "
        f"{export['optuna']}; export: `{export['path']}`.", "",
        *([f"Pruning: {export['pruner']}.", ""] if export.get("pruner") else []),
        *([f"Trial{'s' * (len(enqueued) > 1)} {', '.join(enqueued)} {'were' if len(enqueued) > 1 else 'was'} "
           f"enqueued by hand (`study.enqueue_trial`): given points of the space, not sampled.", ""]
          if enqueued else []),
        f"Reproduce: `{search_command(export)}` (TPE samples differently on every run: the same command gives "
        f"another study of the same question).", "",
        f"Best trials (value: the {SCORED[c.get('score', 'worst')]} of the last {k} validation epochs):", "",
        *TRIALS_HEAD, *map(trial_row, best),
    ]
    lines += exploration_lines(export)
    rescored = [g for g in by_recipe(export) if len(g["levels"]) > 1]
    if rescored:
        lines += ["", f"Re-scored over seeds (`tinymnist search-rescore`), by mean level of the last {k} "
                      f"validation epochs:", "",
                  "| Screened trial | Params | Model | Seeds | Level per seed | Mean ± sd |",
                  "|---|---|---|---|---|---|"]
        for g in rescored:
            seeds = sorted(g["levels"])
            levels = " ".join(f"{g['levels'][x]:.2f}" for x in seeds)
            lines.append(f"| {g['screen']} | {g['n_params']:,} | `{g['model']}` | {seed_list(seeds)} | {levels} | "
                         f"{g['mean']:.3f} ± {g['sd']:.3f} |")
    if bar and bar[0] != export["study"] and c.get("score", "worst") == "worst":  # a level has its own rule
        lines += bar_lines(done, bar)
    front = pareto(done)
    lines += ["", "Frontier (complete trials no smaller trial beats): " + ", ".join(
        f"{t['n_params']:,} params {t['value']:.2f}% (trial {t['number']})" for t in front) + "."]
    if confirmed:
        lines += ["", f"Confirmed on fresh seeds: the full 60,000 training images, judged on the test set "
                      f"(>= {TARGET} in each of the last {k} epochs):", "",
                  "| Trial | Params | Seeds | Seeds passing | Final test acc (mean ± std) | Min test acc, last K | "
                  "Wall seconds per run (median) | Command |", "|---|---|---|---|---|---|---|---|"]
        for number, f in sorted(confirmed.items()):
            seeds = [s["seed"] for s in f["seeds"]]
            wall = f["wall_seconds"][len(f["wall_seconds"]) // 2]
            lines.append(f"| {number} | {f['params']:,} | {seed_list(seeds)} | {pass_count(f)} | "
                         f"{f['final_mean']:.2f} ± {f['final_std']:.2f} | {f['min_last_k']:.2f} | {wall:.0f} | "
                         f"`tinymnist search-confirm {export['path']} --trial {number} --seed-list "
                         f"{','.join(map(str, seeds))} --jobs 2{' ' + f['flags'] if f['flags'] else ''}` |")
    return lines + [""]


def search_markdown(exports: list[dict], root: Path, figure: Path, out: Path, command: str,
                    bar: str | None = None) -> str:
    """``out`` (docs/search.md): how trials are chosen, the frontier figure (written to ``figure``), and a
    section per study; with ``bar`` (a study's name), each other study lists its trials that reached that
    study's best validation score, fastest first."""
    confirmed = {e["study"]: confirmations(e, root) for e in exports}
    frontier_figure(exports, confirmed, figure)
    lines = [
        "# The search", "",
        f"Generated by `{command}` from the study exports committed under `evidence/studies/` and the "
        f"confirmation runs under `{root}/` (each run's header names its study and trial).", "",
        "## How a trial is chosen, and confirmed", "",
        "- **Trials never see the test set.** Each trains on the training images minus the last 10,000, and is "
        "scored on those 10,000 (the validation split). The search reads only the training files: it runs with "
        "the test files absent.",
        "- **Objective**: the level (mean) of the validation accuracy over the last K epochs (K = 5 unless a "
        "study has fewer epochs), or, in studies made before 0.4.0, the worst of them - the exercise's "
        "\"consistently in the last epochs\" measured where choosing is allowed. Across fresh seeds the level "
        "decides a pass far more than the wobble around it does, and a mean over five epochs is a steadier "
        "estimate of it than a minimum. "
        "Models above `--max-params` are sampled but not trained (pruned at once, marked over budget).",
        "- **Pruning**: after each epoch a trial reports its validation accuracy and may be stopped when it is "
        "below the median of the finished trials with the same number of epochs at the same epoch (each study "
        "below gives its exact rule). Since 0.4.0 only late: once the trial's LR has fallen to a quarter of its "
        "peak and before its last K epochs (its score) begin - at peak LR the accuracy swings by points from "
        "one epoch to the next, and a cut there ranks noise. Optuna's MedianPruner compares all trials at an "
        "epoch, which would cut a 15-epoch one-cycle run, still at a high learning rate, against shorter runs "
        "already decayed.",
        "- **Exploration by design** (since 0.4.0): a new study on a built-in space starts with an initial "
        "design - the architecture axes (layers, pool position, squeeze, where separable layers start) crossed, "
        "each at its widest widths within the budget, chosen to cover every value of every axis, all with the "
        "compact journey's recipe - so every start-up trial is trained, none is wasted over budget, and TPE "
        "starts from the whole space, not one corner of it.",
        "- **One seed to screen, more to rank**: a trial costs one training; with a common seed, two trials "
        "differ by their settings, not by their draw. A winner can still be lucky on that seed, so "
        "`tinymnist search-rescore` trains the best screened recipes again on further seeds (validation "
        "split still) and ranks them by their mean level; then the chosen ones are trained on the full "
        "training set over fresh seeds (1001 up, never a seed of the search) and judged on the test set, as "
        "every other recipe. Nothing is claimed from the search itself.",
        "- **Validation is not test accuracy**: the validation images are another 10,000 digits and the model "
        "trained on 50,000, not 60,000. The search's scores rank trials; only the confirmation says whether a "
        "recipe holds.", "",
        f"![Search trials: parameters against accuracy]({os.path.relpath(figure, out.parent)})", "",
    ]
    groups = run_groups(root)  # every run record, read once for the front and the calibration
    lines += front_lines(root, groups, figure.with_name(f"{figure.stem}-pass-rate{figure.suffix}"), out)
    rows = calibration_rows(exports, groups)
    lines += calibration_lines(rows) + rule_lines(exports, rows)
    lines += ["## Summary", ""]
    for export in exports:
        done = [t for t in screens(export) if t["state"] == "complete"]
        if not done:
            continue
        top = max(done, key=lambda t: t["value"])
        held = "; ".join(f"trial {n} holds on {f['seeds_passing']} of {f['seeds_run']} fresh seeds on the test set"
                         for n, f in sorted(confirmed[export["study"]].items()))
        n, again = len(screens(export)), len(trained(export)) - len(screens(export))
        also = f" and {again} re-scoring" if again else ""
        lines.append(f"- `{export['study']}` (at most {export['config']['max_params']:,} parameters, {n} trained "
                     f"trial{'s' * (n != 1)}{also}): best screened validation score {top['value']:.2f}% (trial "
                     f"{top['number']}, "
                     f"{top['n_params']:,} parameters){'; ' + held if held else ''}.")
    lines.append("")
    by_name = {e["study"]: e for e in exports}
    if bar and bar not in by_name:
        raise UsageError(f"--bar {bar}: no such study among the exports ({', '.join(by_name)}).")
    best = {e["study"]: max((t["value"] for t in screens(e) if t["state"] == "complete"), default=None)
            for e in exports}
    for export in exports:
        lines += study_section(export, confirmed[export["study"]], bar=(bar, best[bar]) if bar else None)
    return "\n".join(lines)
