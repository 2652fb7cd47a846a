"""Running recorded trainings: one run (new, resumed or reused), a list of seeds in order or in processes.
Every training goes through executor.execute; the run record is its sink here. Progress goes to callbacks;
nothing here prints."""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tinymnist.data import MNIST, load_mnist
from tinymnist.errors import CheckpointError, TinyMnistError, TrainingError, UsageError
from tinymnist.machine import cpu_cores
from tinymnist.models import count_params, create_model, is_user_model, split_user_model
from tinymnist.models.user import USER_MODULE
from tinymnist.runs import records
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.runs.supervise import Supervisor
from tinymnist.targets import LAST_K, first_epoch_holding, judge, over_seeds
from tinymnist.training.engine import Teacher, Trainer
from tinymnist.training.executor import Callbacks, Sink, cut, execute
from tinymnist.training.placement import resolve_options
from tinymnist.training.recipes import Options, RunSpec

EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int], None]


def check_options(options: Options) -> None:
    """Fail on a bad device, precision or compile setting before anything is written."""
    resolve_options(options, 0)


class RecordSink(Sink):
    """A run record as the executor's sink: every epoch is checkpointed as it ends, and the summary (with the
    verdict) is written after the last. Resuming is the executor's (train_run hands it the checkpoint)."""

    def __init__(self, run: RunRecord, last_k: int = LAST_K) -> None:
        self.run, self.last_k = run, last_k
        self.summary: dict | None = None

    def start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()
        if self.run.normalization() is None:  # a run of schema 1 used its training images' own, as trainer does
            self.run.record_normalization(trainer.mean, trainer.std)

    def epoch(self, trainer: Trainer, metrics: dict) -> None:
        self.run.save_checkpoint(trainer.recipe.model, trainer.state_tensors(), trainer.history, trainer.weights())

    def finish(self, trainer: Trainer) -> None:
        params, accs = count_params(trainer.model), [m["test_acc"] for m in trainer.history]
        self.summary = self.run.finish(
            params=params, history=trainer.history, verdict=judge(params, accs, self.last_k).to_dict(),
            first_epoch_holding=first_epoch_holding(accs), last_k=self.last_k, device=str(trainer.device),
            precision=trainer.precision, compiled=trainer.compiled, wall_seconds=time.perf_counter() - self.started)


def identity(spec: RunSpec, data: MNIST) -> dict:
    """What a run of ``spec`` on ``data`` would be, with its options resolved as a new run records them (compare
    it with ``RunRecord.differs_from``)."""
    images = (spec.train_images or len(data.train_labels)) * spec.recipe.epochs
    return records.identity(dataclasses.replace(spec, options=resolve_options(spec.options, images)), data)


def create_run(run: RunRecord, spec: RunSpec, data: MNIST) -> None:
    """Write a new run's header (its spec, the images it trains on, their normalization), under its lock."""
    data = cut(spec, data)
    spec.recipe.check(train_size=len(data.train_labels))
    create_model(spec.recipe.model)  # a missing file or a wrong name is one sentence before anything is written
    load_teacher(spec.recipe.teacher)  # so is a teacher that is not a finished run
    spec = dataclasses.replace(spec, options=resolve_options(spec.options, len(data.train_labels) * spec.recipe.epochs))
    with run.lock():
        run.create(spec, (len(data.train_labels), len(data.held_out_labels)), data.full_sizes, (data.mean, data.std))


def load_teacher(path: str | None, trust: bool = False) -> Teacher | None:
    """The trained model a distilling recipe learns from: a finished run's, as `tinymnist eval` loads it."""
    if not path:
        return None
    from tinymnist.runs.loading import load_model

    loaded = load_model(RunRecord(path).require(finished=True), trust)
    return Teacher(loaded.model, loaded.mean, loaded.std)


def train_run(run: RunRecord, data: MNIST, on_epoch: EpochCallback | None = None,
              on_batch: BatchCallback | None = None, last_k: int = LAST_K, trust: bool = False,
              sinks: tuple[Sink, ...] = ()) -> dict:
    """Train the run recorded in ``run`` to its end, continuing from its checkpoint when it has one, with the
    spec it records (``data`` is cut to its images); return its summary. A finished run is returned as it is.
    All of it happens under the run's lock: no second process writes the same run. A training that fails
    before its first epoch is checkpointed leaves no directory behind (Ctrl-C aside: it keeps the run to resume);
    an exception raised in a user's model file is one sentence naming its file and line."""
    if run.finished():
        return run.summary()
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json); give a directory `tinymnist train` "
                         f"wrote.")
    with run.lock():
        if run.finished():  # finished by another process in the meantime
            return run.summary()
        record = RecordSink(run, last_k)
        checkpoint, source = run.load_checkpoint(run.recipe().model), run.model_source(trust)
        teacher = load_teacher(run.recipe().teacher, trust)
        spec = dataclasses.replace(run.spec(), normalization=run.normalization(), model_source=source)
        try:
            execute(spec, data, [record, Callbacks(on_epoch, on_batch), *sinks], resume=checkpoint, teacher=teacher)
        except CheckpointError as e:  # the checkpoint does not fit the model: say which run
            run.discard()
            raise CheckpointError(f"{run.path}: {e}") from None
        except TinyMnistError:
            run.discard()
            raise
        except Exception as e:
            run.discard()
            where = user_frame(e)
            if where is None:
                raise
            raise UsageError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'} "
                             f"(raised by your model during training); fix the model file.") from None
        return record.summary


def user_frame(error: BaseException) -> str | None:
    """'FILE line N' of the innermost frame of ``error``'s traceback that runs a user's model file, or None."""
    found = None
    for frame, line in traceback.walk_tb(error.__traceback__):
        if str(frame.f_globals.get("__name__", "")).startswith(USER_MODULE):
            found = f"{frame.f_code.co_filename} line {line}"
    return found


# --- many seeds ------------------------------------------------------------------------------------------

def seed_runs(root: Path, spec: RunSpec, seeds: list[int], data: MNIST) -> dict[int, RunRecord]:
    """The run of each seed under ``root``; a directory holding a run of another identity (model file, recipe,
    data, options) is refused before anything trains, naming what differs (one of the same identity is reused
    when finished, resumed when not)."""
    runs = {}
    for seed in seeds:
        run = RunRecord(run_dir(root, spec.step, seed))
        if run.exists() and (differs := run.differs_from(identity(spec.with_seed(seed), data))):
            raise UsageError(f"{run.path} holds a run that differs in its {' and its '.join(differs)}; train into "
                             f"a new --runs folder, or delete {run.path} to replace it.")
        runs[seed] = run
    return runs


def run_seeds(spec: RunSpec, seeds: list[int], root: Path, data: MNIST,
              on_run: Callable[[int, RunRecord], None] | None = None, on_epoch: EpochCallback | None = None,
              on_batch: BatchCallback | None = None, last_k: int = LAST_K, jobs: int = 1,
              trust: bool = False) -> dict:
    """Train (or reuse) one run of ``spec`` per seed and judge them together (targets.over_seeds).

    ``jobs`` > 1 trains that many seeds at once, each in its own process (see ``train_parallel``); then
    ``on_epoch`` gets each epoch's metrics with a "seed" key added and ``on_run``/``on_batch`` are not called."""
    if jobs > 1:
        threads = spec.options.threads or max(1, cpu_cores() // jobs)
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, threads=threads))
    runs = seed_runs(root, spec, seeds, data)
    for seed, run in runs.items():
        if not run.started():
            create_run(run, spec.with_seed(seed), data)
    if jobs > 1:
        train_parallel(runs, data, jobs, on_epoch, last_k, trust)
    else:
        for seed, run in runs.items():
            if on_run:
                on_run(seed, run)
            train_run(run, data, on_epoch, on_batch, last_k, trust)
    return over_seeds(seeds, [run.metrics() for run in runs.values()], runs[seeds[0]].summary()["params"], last_k)


def confirmation_runs(root: Path, step: str, spec: RunSpec, exclude: set[int]) -> list[RunRecord]:
    """The finished runs of ``spec``'s recipe under ``root`` on seeds outside ``exclude`` (its tuning seeds, and
    those a report already shows): the step's confirmation, in seed order."""
    found = [RunRecord(p.parent) for p in run_dir(root, step, 0).parent.glob("seed-*/summary.json")]
    model = spec.recipe.model  # a user's file: a run records it by its absolute path
    if is_user_model(model):
        model = f"{split_user_model(model)[0].resolve()}:{model.rpartition('.py:')[2]}"
    recipe = dataclasses.replace(spec.recipe, model=model)
    return sorted((r for r in found if r.recipe().seed not in exclude
                   and r.recipe() == dataclasses.replace(recipe, seed=r.recipe().seed)), key=lambda r: r.recipe().seed)


def train_parallel(runs: dict[int, RunRecord], data: MNIST, jobs: int,
                   on_epoch: EpochCallback | None = None, last_k: int = LAST_K, trust: bool = False) -> None:
    """Train the runs of several seeds, ``jobs`` at a time, each in a fresh process that reloads the data from
    ``data.source`` (the same files, so the same images) and cuts them as the run record says. Small
    convolutions use two threads poorly, so several one-thread jobs get more done (docs/performance.md). On
    Ctrl-C the processes are stopped; their finished epochs are checkpointed and resume on the next call.
    Results stay per process, so a seed's numbers depend only on its seed and its options."""
    if data.source is None:
        raise UsageError("parallel seeds need data loaded from files (their directory is reloaded in each process).")
    waiting = [seed for seed, run in runs.items() if not run.finished()]
    with Supervisor() as pool:
        def fill() -> None:
            while waiting and len(pool.running) < jobs:
                seed = waiting.pop(0)
                pool.start(seed, _train_worker, str(runs[seed].path), str(data.source), last_k, trust)

        fill()
        for event in pool.events():
            if event.kind == "epoch" and on_epoch:
                on_epoch({"seed": event.key, **event.payload})
            elif event.kind == "error":
                raise event.payload
            elif event.kind == "exit":
                if event.payload != 0:
                    raise TrainingError(f"the process training seed {event.key} stopped (exit code {event.payload}); "
                                        f"run the same command again to resume it.")
                fill()


def _train_worker(send: Callable, path: str, source: str, last_k: int, trust: bool) -> None:
    data = load_mnist(source, allow_download=False, expect_counts=None)
    train_run(RunRecord(Path(path)), data, lambda m: send("epoch", m), None, last_k, trust)
