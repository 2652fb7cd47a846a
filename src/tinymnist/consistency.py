"""Consistency over seeds: one run per seed, then the figures that say whether a recipe holds its targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from .data import MNIST
from .engine import Options
from .errors import UsageError
from .recipes import Recipe
from .runs import RunDir, read_json, train_run, write_json
from .targets import LAST_K, first_epoch_holding, holds

SUMMARY = "consistency.json"


def seed_runs(step: str, recipe: Recipe, seeds: list[int], out: Path) -> list[RunDir]:
    """The run directory of each seed under ``out/step``, created when new; a directory that holds another
    recipe is refused, a finished one is reused and an unfinished one resumed by ``train_run``."""
    runs = []
    for seed in seeds:
        run = RunDir(out / step / f"seed-{seed}")
        seeded = recipe.with_overrides(seed=seed)
        if not run.exists():
            run.create(step, seeded, {"seed": seed}, {})
        elif run.recipe() != seeded:
            raise UsageError(f"{run.path} holds a different recipe of {step}; choose another --out.")
        runs.append(run)
    return runs


def run_seeds(step: str, recipe: Recipe, seeds: list[int], out: Path, data: MNIST, options: Options,
              on_run: Callable[[int, RunDir], None] | None = None,
              on_epoch: Callable[[dict], None] | None = None,
              on_batch: Callable[[int, int], None] | None = None, last_k: int = LAST_K, record: bool = True) -> dict:
    """Train (or reuse) one run per seed and, when ``record``, write ``out/step/consistency.json``."""
    if last_k > recipe.epochs:
        raise UsageError(f"K = {last_k} last epochs is more than the recipe's {recipe.epochs} epochs.")
    summaries = []
    for seed, run in zip(seeds, seed_runs(step, recipe, seeds, out), strict=True):
        if on_run:
            on_run(seed, run)
        summaries.append(train_run(run, data, options, on_epoch, on_batch))
    result = summarize(step, seeds, [RunDir(out / step / f"seed-{s}").metrics() for s in seeds],
                       summaries[0]["params"], last_k)
    if record:
        write_json(out / step / SUMMARY, result)
    return result


def summarize(step: str, seeds: list[int], histories: list[list[dict]], params: int, last_k: int = LAST_K) -> dict:
    per_seed = []
    for seed, history in zip(seeds, histories, strict=True):
        tail = [m["test_acc"] for m in history[-last_k:]]
        per_seed.append({"seed": seed, f"last_{last_k}": tail, "min": min(tail), "final": history[-1]["test_acc"],
                         "passed": len(history) >= last_k and all(holds(a) for a in tail)})
    finals = [s["final"] for s in per_seed]
    return {
        "step": step, "params": params, "last_k": last_k, "seeds": per_seed,
        "seeds_passing": sum(s["passed"] for s in per_seed), "seeds_run": len(per_seed),
        "final_mean": statistics.fmean(finals), "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "min_last_k": min(s["min"] for s in per_seed),
    }


def results_markdown(root: Path, order: list[str]) -> str:
    """docs/results.md: one row per ``root/STEP/consistency.json``, in ``order`` (journeys, then extras)."""
    found = {p.parent.name: read_json(p) for p in root.glob(f"*/{SUMMARY}")}
    if not found:
        raise UsageError(f"no consistency results under {root}; run `tinymnist consistency STEP --out {root}` first.")
    names = [n for n in order if n in found] + sorted(set(found) - set(order))
    lines = ["| Step / recipe | Params | Seeds passing | Final test acc (mean ± std) | Min test acc, last K epochs "
             "(all seeds) | First epoch holding 99.40%, per seed | Command |", "|---|---|---|---|---|---|---|"]
    for name in names:
        r = found[name]
        seeds = [s["seed"] for s in r["seeds"]]
        firsts = []
        for seed in seeds:
            first = first_epoch_holding([m["test_acc"] for m in RunDir(root / name / f"seed-{seed}").metrics()])
            firsts.append(str(first) if first else "none")
        command = f"tinymnist consistency {name} --seed-list {','.join(map(str, seeds))}"
        lines.append(f"| `{name}` | {r['params']:,} | {r['seeds_passing']} of {r['seeds_run']} | "
                     f"{r['final_mean']:.2f} ± {r['final_std']:.2f} | {r['min_last_k']:.2f} (K = {r['last_k']}) | "
                     f"{', '.join(firsts)} | `{command}` |")
    return "\n".join(lines)
