"""docs/search.md and its frontier figure, from committed study exports (``tinymnist search-export``) and the
confirmation runs of chosen trials (``tinymnist search-confirm``). Reads no study storage and trains nothing, so
the document regenerates anywhere from the repository alone."""

from __future__ import annotations

import os
from collections import Counter
from importlib.resources import files
from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.reports.calibration import calibration_lines, calibration_rows, front_lines, rule_lines
from tinymnist.reports.folds import BASELINE, folds_lines, read_folds
from tinymnist.reports.render import pass_count, seed_list
from tinymnist.reports.results_doc import run_groups
from tinymnist.reports.search_figures import frontier_figure
from tinymnist.search.analysis import (
    SCORED,
    by_recipe,
    confirmations,
    pareto,
    screen_ranking,
    screens,
    space_flag,
    trained,
)
from tinymnist.search.space import SearchConfig, builtin_2_architectures, builtin_architectures
from tinymnist.targets import LAST_K, TARGET


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
    hours = sum(t["seconds"] or 0 for t in done) / 3600
    rate = f" ({len(arch) / hours:.1f} per worker-hour of screening)" if hours else ""
    return ["", f"Exploration: {len(arch)} architecture{'s' * (len(arch) != 1)} trained{in_budget}{rate}; trials per "
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
    lines += rescored_lines(export, k)
    if bar and bar[0] != export["study"] and c.get("score", "worst") == "worst":  # a level has its own rule
        lines += bar_lines(done, bar)
    front = pareto(done)
    lines += ["", "Frontier (complete trials no smaller trial beats): " + ", ".join(
        f"{t['n_params']:,} params {t['value']:.2f}% (trial {t['number']})" for t in front) + "."]
    return lines + confirmed_lines(export, confirmed, k) + [""]


def rescored_lines(export: dict, k: int) -> list[str]:
    """The study's recipes trained on more than one seed, by mean level."""
    rescored = [g for g in by_recipe(export) if len(g["levels"]) > 1]
    if not rescored:
        return []
    lines = ["", f"Re-scored over seeds (`tinymnist search-rescore`), by mean level of the last {k} validation "
                 f"epochs:", "", "| Screened trial | Params | Model | Seeds | Level per seed | Mean ± sd |",
             "|---|---|---|---|---|---|"]
    for g in rescored:
        seeds = sorted(g["levels"])
        levels = " ".join(f"{g['levels'][x]:.2f}" for x in seeds)
        lines.append(f"| {g['screen']} | {g['n_params']:,} | `{g['model']}` | {seed_list(seeds)} | {levels} | "
                     f"{g['mean']:.3f} ± {g['sd']:.3f} |")
    return lines


def confirmed_lines(export: dict, confirmed: dict[int, dict], k: int) -> list[str]:
    """The study's trials confirmed on fresh test seeds, with the command that trains them."""
    if not confirmed:
        return []
    lines = ["", f"Confirmed on fresh seeds: the full 60,000 training images, judged on the test set "
                 f"(>= {TARGET} in each of the last {k} epochs):", "",
             "| Trial | Params | Seeds | Seeds passing | Final test acc (mean ± std) | Min test acc, last K | "
             "Wall seconds per run (median) | Command |", "|---|---|---|---|---|---|---|---|"]
    models = {t["number"]: t["model"] for t in export["trials"]}
    for number, f in sorted(confirmed.items()):
        seeds = [s["seed"] for s in f["seeds"]]
        wall = f["wall_seconds"][len(f["wall_seconds"]) // 2]
        lines.append(f"| {number} | {f['params']:,} | {seed_list(seeds)} | {pass_count(f)} | "
                     f"{f['final_mean']:.2f} ± {f['final_std']:.2f} | {f['min_last_k']:.2f} | {wall:.0f} | "
                     f"`tinymnist search-confirm {export['path']} --trial {number}{space_flag(models[number])} "
                     f"--seed-list "
                     f"{','.join(map(str, seeds))} --jobs 2{' ' + f['flags'] if f['flags'] else ''}` |")
    return lines


SCREEN_EPOCHS = (3, 5, 8, 10)  # epochs after which a shorter screen would stop
SCREEN_RHO = 0.9  # the rank correlation a shorter screen must reach in every study to be adopted


def screen_lines(exports: list[dict]) -> list[str]:
    """The measured ranking of screens cut short, and whether the rule adopts one."""
    measured = [(e["study"], r) for e in exports if (r := screen_ranking(e, SCREEN_EPOCHS))]
    if not measured:
        return []
    text = (files("tinymnist") / "reports" / "templates" / "search-screens.md").read_text()
    lines = text.format(threshold=SCREEN_RHO).split("\n")
    heads = " | ".join(f"rho after epoch {e}" for e in SCREEN_EPOCHS)
    lines += [f"| Study | Complete trials (epochs) | {heads} |",
              "|---|---|" + "---|" * len(SCREEN_EPOCHS)]
    for study, r in measured:
        cells = [f"{r['rho'][e]:+.2f}" if e in r["rho"] else "" for e in SCREEN_EPOCHS]
        lines.append(f"| `{study}` | {r['trials']} ({r['epochs']}) | " + " | ".join(cells) + " |")
    kept = [e for e in SCREEN_EPOCHS if all(e in r["rho"] and r["rho"][e] >= SCREEN_RHO for _, r in measured)]
    lowest = {e: min(r["rho"][e] for _, r in measured if e in r["rho"]) for e in SCREEN_EPOCHS
              if any(e in r["rho"] for _, r in measured)}
    verdict = (f"Adopted: a screen stopped after epoch {kept[0]} ranks as the full one in every study." if kept else
               "No shorter screen is adopted: no epoch reaches the rule's rho in every study (lowest per epoch: "
               + ", ".join(f"{e}: {v:+.2f}" for e, v in lowest.items()) + "). Before the LR has fallen, a "
               "trial's accuracy says little about where it ends; the studies keep full-length screens with late "
               "pruning, and rank over seeds before anything is confirmed.")
    return [*lines, "", verdict, ""]


def search_markdown(exports: list[dict], root: Path, figure: Path, out: Path, command: str,
                    bar: str | None = None, folds: Path | None = None, baseline: str = BASELINE) -> str:
    """``out`` (docs/search.md): how trials are chosen, the frontier figure (written to ``figure``), and a
    section per study; with ``bar`` (a study's name), each other study lists its trials that reached that
    study's best validation score, fastest first; with ``folds`` (a fold study's JSON lines), the cross-validated
    levels, their calibration and the candidates paired with ``baseline`` (STUDY:TRIAL)."""
    confirmed = {e["study"]: confirmations(e, root) for e in exports}
    frontier_figure(exports, confirmed, figure)
    head = (files("tinymnist") / "reports" / "templates" / "search.md").read_text()
    lines = head.format(command=command, root=root, figure=os.path.relpath(figure, out.parent)).split("\n")
    groups = run_groups(root)  # every run record, read once for the front and the calibration
    lines += front_lines(root, groups, figure.with_name(f"{figure.stem}-pass-rate{figure.suffix}"), out)
    rows = calibration_rows(exports, groups)
    lines += calibration_lines(rows) + rule_lines(exports, rows, confirmed)
    if folds:
        lines += folds_lines(read_folds(folds), exports, rows, str(folds), baseline)
    lines += screen_lines(exports)
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
