"""Running things: one run (new, resumed or reused), a list of seeds in order or in processes. Progress goes to
callbacks; nothing here prints."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from .data import MNIST, load_mnist
from .engine import Trainer, fit, pick_device, resolve_precision
from .errors import CheckpointError, TrainingError, UsageError
from .models import count_params
from .recipes import Options, Recipe
from .records import NewRun, RunRecord, data_for, run_dir
from .targets import LAST_K, first_epoch_holding, judge, over_seeds

EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int], None]


def check_options(options: Options) -> None:
    """Fail on a bad device or precision before anything is written."""
    resolve_precision(options.precision, pick_device(options.device))


def create_run(run: RunRecord, new: NewRun, data: MNIST) -> None:
    """Write a new run's header (recipe, options, the images it trains on, their normalization), under its lock."""
    new.recipe.check(train_size=len(data.train_labels))
    with run.lock():
        run.create(new, (len(data.train_labels), len(data.test_labels)), data.full_sizes, (data.mean, data.std))


def train_run(run: RunRecord, data: MNIST, on_epoch: EpochCallback | None = None,
              on_batch: BatchCallback | None = None, last_k: int = LAST_K, trust: bool = False) -> dict:
    """Train the run recorded in ``run`` to its end, continuing from its checkpoint when it has one, with the
    options and on the images it records (``data`` is cut to them); return its summary. A finished run is
    returned as it is. All of it happens under the run's lock: no second process writes the same run."""
    if run.finished():
        return run.summary()
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json); give a directory `tinymnist train` "
                         f"wrote.")
    with run.lock():
        if run.finished():  # finished by another process in the meantime
            return run.summary()
        recipe, options = run.recipe(), run.options()
        data = data_for(run, data)
        start = time.perf_counter()
        trainer = Trainer(recipe, data, options, run.normalization(), run.model_source(trust))
        tensors, history = run.load_checkpoint(recipe.model)
        if history:
            try:
                trainer.load_state(tensors, history)
            except (KeyError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"the checkpoint in {run.path} does not fit model {recipe.model!r} "
                                      f"({e}).") from None
        for metrics in history:
            if on_epoch:
                on_epoch(metrics)

        def end_of_epoch(t: Trainer, metrics: dict) -> None:
            run.save_checkpoint(recipe.model, t.state_tensors(), t.history)
            if on_epoch:
                on_epoch(metrics)

        fit(recipe, data, options, end_of_epoch, on_batch, trainer)
        params, accs = count_params(trainer.model), [m["test_acc"] for m in trainer.history]
        return run.finish(params=params, history=trainer.history, verdict=judge(params, accs, last_k).to_dict(),
                          first_epoch_holding=first_epoch_holding(accs), last_k=last_k,
                          device=str(trainer.device), precision=trainer.precision,
                          wall_seconds=time.perf_counter() - start, normalization=(trainer.mean, trainer.std))


# --- many seeds ------------------------------------------------------------------------------------------

def seed_runs(root: Path, step: str, recipe: Recipe, seeds: list[int]) -> dict[int, RunRecord]:
    """The run of each seed under ``root``; a directory holding another recipe of ``step`` is refused before
    anything trains (a finished one is reused, an unfinished one resumed)."""
    runs = {}
    for seed in seeds:
        run = RunRecord(run_dir(root, step, seed))
        if run.exists() and run.recipe() != recipe.with_overrides(seed=seed):
            raise UsageError(f"{run.path} holds a different recipe of {step}; choose another --out.")
        runs[seed] = run
    return runs


def run_seeds(step: str, recipe: Recipe, seeds: list[int], root: Path, data: MNIST, options: Options,
              on_run: Callable[[int, RunRecord], None] | None = None, on_epoch: EpochCallback | None = None,
              on_batch: BatchCallback | None = None, last_k: int = LAST_K, jobs: int = 1,
              overrides: dict | None = None, trust: bool = False, journey_file: Path | None = None) -> dict:
    """Train (or reuse) one run per seed and judge them together (targets.over_seeds). ``overrides`` are the
    settings the user changed in the step's recipe (recorded with each run).

    ``jobs`` > 1 trains that many seeds at once, each in its own process (see ``train_parallel``); then
    ``on_epoch`` gets each epoch's metrics with a "seed" key added and ``on_run``/``on_batch`` are not called."""
    if last_k > recipe.epochs:
        raise UsageError(f"K = {last_k} last epochs is more than the recipe's {recipe.epochs} epochs.")
    if jobs > 1:
        options = dataclasses.replace(options, threads=options.threads or max(1, cpu_cores() // jobs))
    runs = seed_runs(root, step, recipe, seeds)
    for seed, run in runs.items():
        if not run.exists():
            seeded = recipe.with_overrides(seed=seed)
            create_run(run, NewRun(step, seeded, options, {**(overrides or {}), "seed": seed}, journey_file), data)
    if jobs > 1:
        train_parallel(runs, data, jobs, on_epoch, last_k, trust)
    else:
        for seed, run in runs.items():
            if on_run:
                on_run(seed, run)
            train_run(run, data, on_epoch, on_batch, last_k, trust)
    return over_seeds(seeds, [run.metrics() for run in runs.values()], runs[seeds[0]].summary()["params"], last_k)


def confirmation_runs(root: Path, step: str, recipe: Recipe, exclude: set[int]) -> list[RunRecord]:
    """The finished runs of ``recipe`` under ``root`` on seeds outside ``exclude`` (its tuning seeds, and those a
    report already shows): the step's confirmation, in seed order."""
    found = [RunRecord(p.parent) for p in run_dir(root, step, 0).parent.glob("seed-*/summary.json")]
    return sorted((r for r in found if r.recipe().seed not in exclude
                   and r.recipe() == recipe.with_overrides(seed=r.recipe().seed)), key=lambda r: r.recipe().seed)


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def train_parallel(runs: dict[int, RunRecord], data: MNIST, jobs: int,
                   on_epoch: EpochCallback | None = None, last_k: int = LAST_K, trust: bool = False) -> None:
    """Train the runs of several seeds, ``jobs`` at a time, each in a fresh process that reloads the data from
    ``data.source`` (the same files, so the same images) and cuts them as the run record says. Small
    convolutions use two threads poorly, so several one-thread jobs get more done (docs/performance.md). On
    Ctrl-C the processes are stopped; their finished epochs are checkpointed and resume on the next call.
    Results stay per process, so a seed's numbers depend only on its seed and its options."""
    if data.source is None:
        raise UsageError("parallel seeds need data loaded from files (their directory is reloaded in each process).")
    ctx = multiprocessing.get_context("spawn")  # never fork a process whose torch has started its threads
    messages = ctx.Queue()
    waiting = [seed for seed, run in runs.items() if not run.finished()]
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                seed = waiting.pop(0)
                running[seed] = ctx.Process(target=_train_worker, daemon=True,
                                            args=(seed, str(runs[seed].path), str(data.source), last_k, trust,
                                                  messages))
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


def _train_worker(seed: int, path: str, source: str, last_k: int, trust: bool,
                  messages: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    warnings.simplefilter("ignore")  # notes on old names are the parent's to show
    try:
        data = load_mnist(source, allow_download=False, expect_counts=None)
        train_run(RunRecord(Path(path)), data, lambda m: messages.put(("epoch", seed, m)), None, last_k, trust)
        messages.put(("done", seed, None))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        messages.put(("error", seed, e))
