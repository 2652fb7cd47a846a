"""docs/results.md and the README's headline table, from run records: a row per step (and per set of
overrides) and per kind of seed, paired comparisons, the seeds each recipe was tuned on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.reports.render import pass_count, seed_list
from tinymnist.runs.records import RunRecord
from tinymnist.search.analysis import space_flag
from tinymnist.settings import OVERRIDES
from tinymnist.steps.builtin import all_steps
from tinymnist.targets import LAST_K, TARGET, holds_last_k, mean_interval, over_seeds


def arithmetic(runs: dict[int, tuple[str, int | None]]) -> str:
    """'bf16, 1 thread', or one such phrase per group of seeds when they differ."""
    groups: dict[tuple[str, int | None], list[int]] = {}
    for seed, key in runs.items():
        groups.setdefault(key, []).append(seed)
    parts = [f"{precision}, {f'{threads} thread' + 's' * (threads > 1) if threads else 'default threads'}"
             for precision, threads in groups]
    if len(parts) == 1:
        return parts[0]
    return "; ".join(f"{part} (seed{'s' * (len(seeds) > 1)} {seed_list(seeds)})"
                     for part, seeds in zip(parts, groups.values(), strict=True))


def chosen_on(header: dict) -> str:
    """How a run's recipe was chosen: a confirmed search trial on its study's validation split; a step with
    tuning seeds by looking at those seeds' test accuracy (the exercise's own protocol)."""
    if header.get("origin"):
        return "validation split"
    return "test set" if header.get("tuned_seeds") else "not recorded"


def results_row(name: str, kind: str, figures: dict, how: dict[int, tuple[str, int | None]], cpu: str | None,
                command: str, chosen: str) -> str:
    seeds = [s["seed"] for s in figures["seeds"]]
    firsts = ", ".join(str(s["first_holding"]) if s["first_holding"] else "none" for s in figures["seeds"])
    return (f"| `{name}` | {figures['params']:,} | {chosen} | {seed_list(seeds)} ({kind}) | {pass_count(figures)} | "
            f"{figures['final_mean']:.2f} ± {figures['final_std']:.2f} | {figures['min_last_k']:.2f} "
            f"(K = {figures['last_k']}) | {firsts} | {arithmetic(how)}{', ' + cpu if cpu else ''} | `{command}` |")


RunGroup = tuple[str, str, str, str | None]  # (step, flags, precision, CPU): one row's runs, by seed


def paired_rows(groups: dict[RunGroup, dict[int, RunRecord]], last_k: int = LAST_K) -> list[str]:
    """For two rows of one step that ran the same seeds (at least two), and for a step's row against the same
    row (flags, precision, CPU) of its baseline step (Step.baseline): the mean difference, second minus first,
    of each seed's lowest test accuracy over its last K epochs, with its 95% t interval."""
    steps = all_steps()

    def worst(run: RunRecord) -> float:
        return min(run.test_accs()[-last_k:])

    def label(group: RunGroup) -> str:
        _, flags, precision, cpu = group
        return f"{flags or 'as defined'}, {precision}{', ' + cpu if cpu else ''}"

    def paired(first: RunGroup, second: RunGroup) -> str | None:
        """The Step cell of a pair, or None when the two rows are no pair."""
        if first[0] == second[0]:
            return f"`{first[0]}`"
        if first[1:] == second[1:] and second[0] in steps and steps[second[0]].baseline == first[0]:
            return f"`{second[0]}` against `{first[0]}`"
        return None

    rows = []
    keys = list(groups)
    for i, first in enumerate(keys):
        for j, second in enumerate(keys):
            if j == i or (first[0] == second[0] and j < i):  # a pair within one step once, in the table's order
                continue
            name, common = paired(first, second), sorted(set(groups[first]) & set(groups[second]))
            if name is None or len(common) < 2:
                continue
            diffs = [worst(groups[second][s]) - worst(groups[first][s]) for s in common]
            mean, low, high = mean_interval(diffs)
            passes = [sum(holds_last_k(g[s].test_accs(), last_k) for s in common) for g in (groups[first],
                                                                                          groups[second])]
            rows.append(f"| {name} | {label(first)} | {label(second)} | {seed_list(common)} | "
                        f"{passes[0]} / {passes[1]} | {mean:+.3f} | {low:+.3f} to {high:+.3f} |")
    return rows


PAIRED_HEAD = ("| Step | First | Second | Seeds (both) | Seeds passing, first / second | Mean difference in the lowest "
               "test acc of the last K epochs (second - first, points) | 95% interval (t) |\n"
               "|---|---|---|---|---|---|---|")


RESULTS_HEAD = ("| Step / recipe | Params | Chosen on | Seeds | Seeds passing | Final test acc (mean ± std) | "
                f"Min test acc, last K epochs (all seeds) | First epoch holding {TARGET}, per seed | Trained with | "
                "Command |\n"
                "|---|---|---|---|---|---|---|---|---|---|")


def results_document(rows: list[str], tuned: dict[str, tuple[int, ...]], command: str,
                     paired: list[str] | None = None, where: str = "evidence/runs") -> str:
    tuning = "\n".join(f"- `{name}`: {seed_list(seeds) if seeds else 'none'}" for name, seeds in tuned.items())
    return "\n".join([
        "# Results over seeds", "",
        f"Generated by `{command}` from the run records under `{where.rstrip('/')}/` (recipe, per-epoch "
        "metrics and summary of every run; no weights). Each row is reproduced by its command (add `--runs DIR`).",
        "",
        f"A seed passes when its test accuracy is >= {TARGET} in each of the last K epochs. **Tuning** seeds are "
        "the seeds whose results were looked at while the recipe was chosen: a pass on them proves the choice, "
        "not the recipe. **Fresh** seeds played no part in choosing it; only they support a claim that the "
        "recipe holds. Seeds passing is given with its 95% Clopper-Pearson interval for the pass rate (exact "
        "binomial: with 10 of 10 the rate is at least 69%, no more is shown). \"Trained with\" is the precision "
        "and CPU threads: the same numbers come back only with both, on the same kind of CPU, and with the "
        "same `--compile` (a row's flags say `--compile on` when its training step was compiled; another "
        "thread count or a compiled step sums in another order, and the run becomes another draw from the "
        "same recipe). \"Chosen on\" says where the recipe was chosen, never where it trained (every run trains "
        "on the training files): **test set** when its tuning seeds' test accuracy was looked at (the exercise's "
        "own protocol: the original's author and tinymnist's journeys "
        "chose so), **validation split** when a search chose it on a split of the training files, never looking at "
        "the test set; the two kinds are never one row.", "",
        RESULTS_HEAD, *rows, "",
        *(["## Paired comparisons", "",
           f"Two rows of one step on the same seeds (K = {LAST_K}): the per-seed difference of the lowest test "
           "accuracy over the last K epochs, which decides a pass. A difference that changes how the arithmetic "
           "runs (precision, threads, CPU, compilation) makes each seed another draw, so the pairing only removes "
           "what the seed fixes (initial weights, data order, augmentation); the interval is what the comparison "
           "says.",
           "", PAIRED_HEAD, *paired, ""] if paired else []),
        "## Seeds each recipe was tuned on", "",
        "Recorded in each run's header (from `Step.tuned_seeds` in `src/tinymnist/steps/builtin.py`, or the seed a "
        "search's trials trained, for a confirmed trial); `tinymnist consistency "
        "STEP --seeds N` never picks them (its seeds count up from 1001, skipping them).", "",
        tuning, ""])


OPTION_FLAGS = {o.field: o.flag for o in OVERRIDES}  # a row's overrides as the flags that reproduce them


def run_groups(root: Path) -> dict[RunGroup, dict[int, RunRecord]]:
    """Every finished run under ``root`` by (step, overrides as flags (--compile on among them), precision,
    CPU), then seed; journeys' steps first, in order. Raises UsageError when there is none."""
    groups: dict[RunGroup, dict[int, RunRecord]] = {}
    for path in sorted(root.glob("**/recipe.json")):
        run = RunRecord(path.parent)
        if not run.finished():
            continue
        overrides = {k: v for k, v in run.header().get("overrides", {}).items() if k in OPTION_FLAGS}
        flags = " ".join(f"{OPTION_FLAGS[k]} {v}" for k, v in sorted(overrides.items()))
        subset = run.data_sizes()[0]
        flags += f"{' ' if flags else ''}--subset {subset}" if subset else ""
        flags += f"{' ' if flags else ''}--compile on" if run.options().compile == "on" else ""
        summary = run.summary()
        groups.setdefault((run.step(), flags, summary.get("precision", "fp32"), summary.get("cpu")), {})[
            run.recipe().seed] = run
    if not groups:
        raise UsageError(f"no finished runs under {root}; run `tinymnist consistency STEP --out {root}` first.")
    order = {name: i for i, name in enumerate(all_steps())}
    return dict(sorted(groups.items(), key=lambda g: (order.get(g[0][0], len(order)), g[0][:3], g[0][3] or "")))


def fresh_seeds_of(runs: dict[int, RunRecord]) -> list[int]:
    """The seeds of ``runs`` that played no part in choosing their recipe (not among its tuning seeds)."""
    tuned = set(next(iter(runs.values())).header()["tuned_seeds"])
    return sorted(s for s in runs if s not in tuned)


def result_groups(groups: dict[RunGroup, dict[int, RunRecord]]) -> Iterator[tuple[str, str, dict, dict, str | None,
                                                                                str, str]]:
    """Every row of docs/results.md as (name with flags, kind of seed, figures over its seeds, precision and
    threads per seed, CPU, the command that reproduces it, where the recipe was chosen): a row per step (and
    per set of overrides) and per kind of seed, tuning or fresh; journeys' steps first, in order."""
    for (name, flags, _, cpu), runs in groups.items():
        header = next(iter(runs.values())).header()
        tuned, origin = set(header["tuned_seeds"]), header["origin"]
        for kind, seeds in (("tuning", sorted(s for s in runs if s in tuned)),
                            ("fresh", sorted(s for s in runs if s not in tuned))):
            if not seeds:
                continue
            summaries = {s: runs[s].summary() for s in seeds}
            figures = over_seeds(seeds, [runs[s].metrics() for s in seeds], summaries[seeds[0]]["params"])
            how = {s: (summaries[s].get("precision", "?"), summaries[s].get("threads")) for s in seeds}
            cmd = (f"tinymnist search-confirm {origin['export']} --trial {origin['trial']}"
                   f"{space_flag(header['recipe']['model'])}" if origin
                   else f"tinymnist consistency {name}") + f" --seed-list {','.join(map(str, seeds))}"
            cmd += f" {flags}" if flags else ""
            if len(set(how.values())) == 1:  # one precision and thread count: the command reproduces every seed
                precision, threads = next(iter(how.values()))
                cmd += f" --precision {precision}" + (f" --threads {threads}" if threads else "")
            yield f"{name}{' ' + flags if flags else ''}", kind, figures, how, cpu, cmd, chosen_on(header)


def results_markdown(root: Path, command: str, where: str = "evidence/runs") -> str:
    """docs/results.md from every finished run under ``root`` (named ``where`` in its text, as the user gave it)."""
    ordered = run_groups(root)
    tuned_by_step = {name: tuple(sorted(next(iter(runs.values())).header()["tuned_seeds"]))
                     for (name, *_), runs in ordered.items()}
    rows = [results_row(*row) for row in result_groups(ordered)]  # the records are read once
    return results_document(rows, tuned_by_step, command, paired_rows(ordered), where)


def table_rows(markdown: str) -> int:
    """The body rows of every table in ``markdown``: a header (the line above a |---| line) is not a row."""
    lines = markdown.splitlines()
    separators = {i for i, line in enumerate(lines) if line.startswith("|---") or line.startswith("| ---")}
    return sum(line.startswith("|") and i not in separators and i + 1 not in separators
               for i, line in enumerate(lines))


HOLDS_SEEDS, HOLDS_SHARE = 10, 0.9  # a recipe holds when at least 90% of at least 10 fresh seeds pass (9 of 10)
HEADLINE_HEAD = (f"| Step / recipe | Params | Chosen on | Fresh seeds | Seeds holding {TARGET} in each of the last "
                 f"{LAST_K} epochs (95% interval) | Final test acc | Trained with |\n|---|---:|---|---|---|---|---|")


def headline_lines(root: Path) -> list[str]:
    """The README's headline table: every row of fresh seeds (none of them looked at while choosing the
    recipe), from the same records and arithmetic as docs/results.md."""
    rows, holding = [HEADLINE_HEAD], []
    for name, kind, figures, how, cpu, _, chosen in result_groups(run_groups(root)):
        if kind == "fresh":
            rows.append(f"| `{name}` | {figures['params']:,} | {chosen} | {len(figures['seeds'])} | "
                        f"{pass_count(figures)} | "
                        f"{figures['final_mean']:.2f} ± {figures['final_std']:.2f} | "
                        f"{arithmetic(how)}{', ' + cpu if cpu else ''} |")
            if figures["seeds_run"] >= HOLDS_SEEDS and figures["seeds_passing"] >= HOLDS_SHARE * figures["seeds_run"]:
                holding.append((figures["params"], name, figures, f"{arithmetic(how)}{', ' + cpu if cpu else ''}",
                                chosen))
    if holding:
        params, name, figures, trained, chosen = min(holding, key=lambda h: (h[0], -h[2]["seeds_passing"] /
                                                                             h[2]["seeds_run"]))
        rows += ["", f"The smallest recipe that holds (at least {HOLDS_SHARE:.0%} of at least {HOLDS_SEEDS} fresh "
                     f"seeds): `{name}`, {params:,} parameters, {figures['seeds_passing']} of {figures['seeds_run']} "
                     f"({trained}; chosen on: {chosen})."]
    return rows


HEADLINE = ("<!-- headline: generated from evidence/runs by `tinymnist results --readme README.md`; do not edit -->",
            "<!-- /headline -->")


def headline_readme(text: str, root: Path) -> str:
    """``text`` (a README) with the block between the HEADLINE markers regenerated from the runs under ``root``."""
    start, end = (text.find(marker) for marker in HEADLINE)
    if start < 0 or end < start:
        raise UsageError(f"the README has no headline block; put the two lines {HEADLINE[0]!r} and {HEADLINE[1]!r} "
                         f"where the table goes.")
    return text[:start] + "\n".join([HEADLINE[0], *headline_lines(root)]) + "\n" + text[end:]
