"""The search: an Optuna study over models and recipes, each trial trained on the training images minus a fixed
validation split and scored on that split. The test files are never opened here.

One study is one question: the best validation score (SearchConfig.value) of a model of at
most ``max_params`` parameters, each trial pruned per epoch against the trials of the same length. Studies live
in any storage SQLAlchemy opens (an SQLite file by default; PostgreSQL to share one across hosts); each trial
keeps the heartbeat Optuna checks, so a trial whose worker died is marked failed and tried again as a new trial.
A trial is trained by executor.execute, with the trial as its sink; workers are children of supervise.Supervisor.

Prints nothing: progress goes to a callback, errors are raised (UsageError, with one sentence).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import socket
import statistics
import time
from collections.abc import Callable

from tinymnist.data import load_validation_split
from tinymnist.errors import TrainingError, UsageError
from tinymnist.machine import cpu_cores
from tinymnist.models import count_params
from tinymnist.runs.supervise import Supervisor
from tinymnist.search.analysis import rescore_plan
from tinymnist.search.space import (
    OVER_BUDGET,
    SearchConfig,
    check_named,
    initial_design,
    optuna_module,
    probe_space,
    sample,
)
from tinymnist.search.study import (
    HEARTBEAT,
    claim_start,
    counts,
    enqueue_design,
    export,
    fail_stale,
    open_storage,
    open_study,
    prune_window,
)
from tinymnist.training.engine import Trainer
from tinymnist.training.executor import Sink, execute
from tinymnist.training.recipes import Options, RunSpec

POLL = 1.0  # seconds between a waiting worker's looks at the study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialSink(Sink):
    """An Optuna trial as the executor's sink: it records the sampled model and refuses it when it is over the
    parameter budget (before any training), then reports each epoch's validation accuracy and prunes."""

    def __init__(self, trial, config: SearchConfig) -> None:  # an optuna Trial
        self.trial, self.config = trial, config
        self.accs: list[float] = []

    def start(self, trainer: Trainer) -> None:
        trial, recipe, params = self.trial, trainer.recipe, count_params(trainer.model)
        first, last = prune_window(recipe, self.config.last_k)
        for key, value in (("model", recipe.model), ("params", params), ("epochs", recipe.epochs),
                           ("seed", recipe.seed), ("prune_from", first), ("prune_until", last),
                           ("recipe", dataclasses.asdict(recipe)), ("worker", worker_id())):
            trial.set_user_attr(key, value)
        if params > self.config.max_params:
            trial.set_user_attr(OVER_BUDGET, True)
            raise optuna_module().TrialPruned(f"{params} parameters > {self.config.max_params}")
        trial.set_user_attr("precision", trainer.precision)
        trial.set_user_attr("compiled", trainer.compiled)  # False until a compiled step has run (epoch 1 says)
        self.started = time.perf_counter()

    def epoch(self, trainer: Trainer, metrics: dict) -> None:
        acc = metrics[f"{trainer.score_prefix}_acc"]  # val_acc: the objective scores on the validation split
        self.accs.append(acc)
        self.trial.set_user_attr("val_acc", self.accs)
        self.trial.set_user_attr("seconds", round(time.perf_counter() - self.started, 1))
        if trainer.epoch == 1:  # the first compiled step has run by now, or been given up
            self.trial.set_user_attr("compiled", trainer.compiled)
        self.trial.report(acc, trainer.epoch)
        if trainer.epoch < trainer.recipe.epochs and self.trial.should_prune():
            raise optuna_module().TrialPruned(f"epoch {trainer.epoch}")

    def score(self) -> float:
        """The trial's value: the level (mean) of its last K validation epochs, or their lowest (a study's
        ``score``); both are kept as user attributes."""
        last = self.accs[-min(self.config.last_k, len(self.accs)):]
        self.trial.set_user_attr("level", statistics.fmean(last))
        self.trial.set_user_attr("worst", min(last))
        return self.config.value(self.accs)


def objective(config: SearchConfig, data: Callable[[int], object], options: Options) -> Callable:
    """The function a worker's study optimizes: train the sampled recipe on the training part of its fold's
    validation split (``data(fold)``: fold 0 unless the trial names another), report each epoch's validation
    accuracy, and return the trial's score (config.value)."""
    optuna = optuna_module()

    def run(trial) -> float:
        recipe = sample(trial, config)
        seed = trial.user_attrs.get("seed", config.seed)  # a re-scoring trial trains another seed (rescore)
        recipe = dataclasses.replace(recipe, seed=seed)
        spec = RunSpec(recipe=recipe, options=options, held_out="validation", tuned_seeds=(seed,))
        sink = TrialSink(trial, config)
        try:
            execute(spec, data(trial.user_attrs.get("fold", 0)), [sink])
        except TrainingError as e:  # the loss diverged: a bad trial, not a broken search
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(str(e)) from None
        return sink.score()

    return run


def waiting(study) -> bool:
    """Whether a trial waits to be trained (a retry of a failed one, a re-scoring or a design trial)."""
    return bool(study.get_trials(deepcopy=False, states=(optuna_module().trial.TrialState.WAITING,)))


def work_left(study, trials: int) -> bool:
    return counts(study)["trained"] < trials or waiting(study)


def worker_loop(url: str, name: str, trials: int, threads: int, heartbeat: int, data_dir: str | None) -> None:
    """One worker: a trial each time it may start one (claim_start), until the study has ``trials`` trained
    trials and none waiting; while others' last trials run, it waits and fails those whose worker stopped."""
    storage = open_storage(url, heartbeat)
    study = open_study(storage, name)
    config = SearchConfig.from_attrs(study.user_attrs)

    @functools.cache
    def data(fold: int) -> object:  # MNIST's validation split of that fold
        return load_validation_split(data_dir, config.validation, config.train_size, fold=fold)

    data(0)
    run = objective(config, data, Options(precision=config.precision, threads=threads))
    while (turn := claim_start(study, storage, trials, 3 * heartbeat)) is not None:
        if turn:
            study.optimize(run, n_trials=1, catch=(), gc_after_trial=False)
        else:
            time.sleep(POLL)
            fail_stale(study)


def _worker(send: Callable, url: str, name: str, trials: int, threads: int, heartbeat: int,
            data_dir: str | None) -> None:
    worker_loop(url, name, trials, threads, heartbeat, data_dir)


def search(url: str, name: str, config: SearchConfig, trials: int, workers: int = 1, heartbeat: int = HEARTBEAT,
           data_dir: str | None = None, on_trial: Callable[[object], None] | None = None,
           on_note: Callable[[str], None] | None = None) -> object:
    """Run (or join) study ``name`` in ``url`` with ``workers`` local worker processes until it has ``trials``
    trained trials; returns the study. ``on_trial`` gets each trial that finishes (from any worker or host)."""
    probe_space(config)  # a refused search creates no storage: these come first
    load_validation_split(data_dir, config.validation, config.train_size)  # missing files fail here, once
    storage = open_storage(url, heartbeat)
    study = open_study(storage, name, config)
    fail_stale(study)  # trials of workers that stopped before this run, even when the count is met: retried
    enqueue_design(study, storage, initial_design(config), trials)  # before any worker: each point once
    threads = max(1, cpu_cores() // workers)
    shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    dead: set[str] = set()
    pids: dict[int, int] = {}
    keys = itertools.count()

    def report() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in shown:
                shown.add(t.number)
                if on_trial:
                    on_trial(t)

    with Supervisor() as pool:
        def start() -> None:
            key = next(keys)
            pids[key] = pool.start(key, _worker, url, name, trials, threads, heartbeat, data_dir)

        while work_left(study, trials) or _orphans(study, dead):
            if not pool.running and _orphans(study, dead):  # wait out the heartbeat grace, then fail and retry them
                time.sleep(heartbeat)
                fail_stale(study)
                report()
                continue
            for _ in range(workers - len(pool.running)):
                start()
            for event in pool.events():
                if event.kind == "error":
                    raise UsageError(str(event.payload))
                if event.kind == "exit" and event.payload != 0:
                    dead.add(f"{socket.gethostname()}:{pids[event.key]}")
                    if on_note:
                        on_note(f"worker {pids[event.key]} stopped (exit code {event.payload}); its trial is "
                                f"marked failed after {3 * heartbeat} s without a heartbeat and tried again as "
                                f"a new trial.")
                    if work_left(study, trials):
                        start()
                if event.kind in ("tick", "exit"):
                    report()
        report()
    return study


def _orphans(study, dead: set[str]) -> bool:
    """Whether a trial is still marked running whose worker died: one of ours, or any process of this host that
    is gone (a search killed before this one)."""
    optuna = optuna_module()
    return any(t.user_attrs.get("worker") in dead or _gone(t.user_attrs.get("worker"))
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _gone(worker: str | None) -> bool:
    """Whether ``worker`` (HOST:PID) is a process of this host that no longer runs."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process
        return False
    return False


def rescore(url: str, name: str, top: int, seeds: list[int], workers: int = 1, heartbeat: int = HEARTBEAT,
            data_dir: str | None = None, on_trial: Callable[[object], None] | None = None,
            on_note: Callable[[str], None] | None = None, space: str | None = None,
            trust: bool = False, folds: int = 1) -> tuple[object, int, bool]:
    """Train the ``top`` best screened recipes of study ``name`` again on each of ``seeds`` (validation split,
    as every trial) and on folds 1 to ``folds`` - 1 of the training files (each holds out its own images): the
    trials are enqueued in the study and trained by its workers (heartbeats and retries
    included), with any the study already has waiting (queued by another host, or left by one that stopped), so
    a second host running the same command shares the work. Returns the study, how many trials were added (0:
    every pair was already there) and whether any were waiting beforehand (and so were joined). A study whose
    space is a file runs it only when ``space`` names the same file and function, or with ``trust``."""
    study = open_study(open_storage(url, heartbeat), name)
    config = SearchConfig.from_attrs(study.user_attrs)
    check_named(config.space, space, trust, name)
    fail_stale(study)  # a host that stopped mid-trial: its trial failed, and queued again
    if folds > 1:  # every fold must fit before any trial is queued
        load_validation_split(data_dir, config.validation, config.train_size, fold=folds - 1)
    plan = rescore_plan(export(study), top, seeds, folds)
    queued = waiting(study)
    for params, attrs in plan:
        study.enqueue_trial(params, user_attrs=attrs)
    if plan or queued:
        search(url, name, config, 0, workers, heartbeat, data_dir, on_trial, on_note)
    return study, len(plan), queued

