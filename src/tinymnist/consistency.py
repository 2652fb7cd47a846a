"""Consistency over seeds: one run per seed, then the figures that say whether a recipe holds its targets."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import statistics
from collections.abc import Callable
from pathlib import Path

from .data import MNIST, load_mnist
from .engine import Options
from .errors import TrainingError, UsageError
from .recipes import Recipe
from .runs import RunDir, read_json, train_run, write_json
from .targets import LAST_K, first_epoch_holding, holds

SUMMARY = "consistency.json"


def seed_runs(step: str, recipe: Recipe, seeds: list[int], out: Path, options: dict | None = None) -> list[RunDir]:
    """The run directory of each seed under ``out/step``, created when new; a directory that holds another
    recipe is refused, a finished one is reused and an unfinished one resumed by ``train_run``."""
    runs = []
    for seed in seeds:
        run = RunDir(out / step / f"seed-{seed}")
        seeded = recipe.with_overrides(seed=seed)
        if not run.exists():
            run.create(step, seeded, {"seed": seed}, options or {})
        elif run.recipe() != seeded:
            raise UsageError(f"{run.path} holds a different recipe of {step}; choose another --out.")
        runs.append(run)
    return runs


def run_seeds(step: str, recipe: Recipe, seeds: list[int], out: Path, data: MNIST, options: Options,
              on_run: Callable[[int, RunDir], None] | None = None,
              on_epoch: Callable[[dict], None] | None = None,
              on_batch: Callable[[int, int], None] | None = None, last_k: int = LAST_K, record: bool = True,
              jobs: int = 1) -> dict:
    """Train (or reuse) one run per seed and, when ``record``, write ``out/step/consistency.json``.

    ``jobs`` > 1 trains that many seeds at once, each in its own process (see ``train_parallel``); then
    ``on_epoch`` gets each epoch's metrics with a "seed" key added and ``on_run``/``on_batch`` are not called."""
    if last_k > recipe.epochs:
        raise UsageError(f"K = {last_k} last epochs is more than the recipe's {recipe.epochs} epochs.")
    if jobs > 1:
        options = dataclasses.replace(options, threads=options.threads or max(1, cpu_cores() // jobs))
    runs = seed_runs(step, recipe, seeds, out, dict(options.__dict__))
    if jobs > 1:
        train_parallel(dict(zip(seeds, runs, strict=True)), data, options, jobs, on_epoch)
    else:
        for seed, run in zip(seeds, runs, strict=True):
            if on_run:
                on_run(seed, run)
            train_run(run, data, options, on_epoch, on_batch)
    result = summarize(step, seeds, [run.metrics() for run in runs], runs[0].summary()["params"], last_k)
    if record:
        write_json(out / step / SUMMARY, result)
    return result


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def train_parallel(runs: dict[int, RunDir], data: MNIST, options: Options, jobs: int,
                   on_epoch: Callable[[dict], None] | None = None) -> None:
    """Train the runs of several seeds, ``jobs`` at a time, each in a fresh process that reloads the data from
    ``data.source`` (the same files, so the same images). Each process trains with ``options`` (set its threads:
    on 2 cores, 2 jobs of 1 thread have 1.33x the throughput of one job of 2 threads, docs/performance.md).
    On Ctrl-C the processes are stopped; their finished epochs are checkpointed and resume on the next call.
    Results stay per process, so a seed's numbers depend only on its seed and ``options``."""
    if data.source is None:
        raise UsageError("parallel seeds need data loaded from files (their directory is reloaded in each process).")
    sizes = (len(data.train_labels), len(data.test_labels))
    ctx = multiprocessing.get_context("spawn")  # never fork a process whose torch has started its threads
    messages = ctx.Queue()
    waiting = [(seed, run) for seed, run in runs.items() if not run.finished()]
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                seed, run = waiting.pop(0)
                running[seed] = ctx.Process(target=_train_worker, daemon=True,
                                            args=(seed, str(run.path), str(data.source), sizes, options, messages))
                running[seed].start()
            try:
                kind, seed, payload = messages.get(timeout=0.5)
            except queue.Empty:
                for seed, process in list(running.items()):
                    if process.exitcode not in (None, 0):  # killed (0 = exited after sending "done")
                        raise TrainingError(f"the process training seed {seed} stopped (exit code "
                                            f"{process.exitcode}); run the same command again to resume it.") from None
                continue
            if kind == "epoch" and on_epoch:
                on_epoch({"seed": seed, **payload})
            elif kind == "error":
                raise payload
            elif kind == "done":
                running.pop(seed).join()
    finally:
        for process in running.values():
            process.terminate()
            process.join()


def _train_worker(seed: int, run_path: str, source: str, sizes: tuple[int, int], options: Options,
                  messages: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    try:
        data = load_mnist(source, allow_download=False, expect_counts=None)
        if sizes != (len(data.train_labels), len(data.test_labels)):
            data = data.subset(*sizes)
        train_run(RunDir(Path(run_path)), data, options, lambda m: messages.put(("epoch", seed, m)))
        messages.put(("done", seed, None))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        messages.put(("error", seed, e))


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


def _arithmetic(run: RunDir) -> tuple[str, int | None]:
    """(precision, CPU threads) a run trained with; threads None when the record predates recording them and
    the run was left to torch's default (one per core)."""
    summary, options = run.summary(), run.record().get("options", {})
    return summary.get("precision", "?"), summary.get("threads") or options.get("threads")


def _describe_arithmetic(how: dict[int, tuple[str, int | None]]) -> str:
    groups: dict[tuple[str, int | None], list[int]] = {}
    for seed, key in how.items():
        groups.setdefault(key, []).append(seed)
    parts = [f"{precision}, {f'{threads} thread' + 's' * (threads > 1) if threads else 'default threads'}"
             for precision, threads in groups]
    if len(parts) == 1:
        return parts[0]
    return "; ".join(f"{part} (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
                     for part, seeds in zip(parts, groups.values(), strict=True))


def results_markdown(root: Path, order: list[str]) -> str:
    """docs/results.md: one row per ``root/STEP/consistency.json``, in ``order`` (journeys, then extras)."""
    found = {p.parent.name: read_json(p) for p in root.glob(f"*/{SUMMARY}")}
    if not found:
        raise UsageError(f"no consistency results under {root}; run `tinymnist consistency STEP --out {root}` first.")
    names = [n for n in order if n in found] + sorted(set(found) - set(order))
    lines = ["| Step / recipe | Params | Seeds passing | Final test acc (mean ± std) | Min test acc, last K epochs "
             "(all seeds) | First epoch holding 99.40%, per seed | Trained with | Command |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = found[name]
        seeds = [s["seed"] for s in r["seeds"]]
        runs = [RunDir(root / name / f"seed-{seed}") for seed in seeds]
        firsts = [first_epoch_holding([m["test_acc"] for m in run.metrics()]) for run in runs]
        how = {seed: _arithmetic(run) for seed, run in zip(seeds, runs, strict=True)}
        command = f"tinymnist consistency {name} --seed-list {','.join(map(str, seeds))}"
        if len(set(how.values())) == 1:  # one precision and thread count: the command reproduces every seed
            precision, threads = next(iter(how.values()))
            command += f" --precision {precision}" + (f" --threads {threads}" if threads else "")
        lines.append(f"| `{name}` | {r['params']:,} | {r['seeds_passing']} of {r['seeds_run']} | "
                     f"{r['final_mean']:.2f} ± {r['final_std']:.2f} | {r['min_last_k']:.2f} (K = {r['last_k']}) | "
                     f"{', '.join(str(f) if f else 'none' for f in firsts)} | {_describe_arithmetic(how)} | "
                     f"`{command}` |")
    return "\n".join(lines)
