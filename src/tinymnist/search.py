"""The search: an Optuna study over models and recipes, each trial trained on the training images minus a fixed
validation split and scored on that split. The test files are never opened here.

One study is one question: the best worst-of-last-K validation accuracy of a model of at most ``max_params``
parameters, each trial pruned per epoch against the trials of the same length. Studies live in any storage
SQLAlchemy opens (an SQLite file by default; PostgreSQL to share one across hosts); each trial keeps the
heartbeat Optuna checks, so a trial whose worker died is marked failed and tried again as a new trial.

Prints nothing: progress goes to a callback, errors are raised (UsageError, with one sentence).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from .data import VALIDATION, load_validation_split
from .errors import TinyMnistError, TrainingError, UsageError
from .models import count_params, create_model, format_args, split_user_model, user_space
from .recipes import Options, Recipe
from .records import recipe_from_dict
from .targets import LAST_K

HEARTBEAT = 10  # seconds between a running trial's heartbeats; after 3 missed ones it is failed and retried
MAX_RETRY = 2  # a failed trial is tried again this many times, each as a new trial linked to it
PRUNE_WARMUP = 3  # epochs before a trial may be pruned
PRUNE_PEERS = 4  # finished trials of the same length needed before one is pruned
PROBE = 300  # models sampled from a space before a study starts: the space works and fits --max-params
OVER_BUDGET = "over_budget"  # the user attribute of a sampled model above --max-params (pruned untrained)

# The built-in space: tinymnist's `tiny` family and the compact journey's recipe shape (SGD, Nesterov momentum
# 0.9, a one-cycle LR that rises for 20% of its cycle and decays linearly to 0.005 x its peak).
LAYERS, POOLS, SEPS, SQUEEZES = (4, 6), (1, 3), (2, 3, 4, 99), (0, 8, 16)
FIRST_WIDTHS, SECOND_WIDTHS, BODY_WIDTHS = (4, 8), (8, 12, 16), (12, 16, 20, 24, 32)
LR_RANGE, BATCHES, AUGMENT_RANGE = (0.03, 0.6), (32, 64, 128, 256), (0.0, 1.5)
HOLD_RANGE = (0, 4)  # epochs after the LR cycle ends, at its final LR
ROTATE, SHIFT, SCALE = 7.0, 0.05, 0.05  # augmentation strength 1 (the compact journey's)


def optuna_module():  # noqa: ANN201 - optuna, imported on first use (an optional extra)
    try:
        import optuna
    except ImportError:
        raise UsageError("the search needs Optuna: pip install 'tinymnist[search]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class SearchConfig:
    """What a study asks; recorded in the study when it is created, and every worker that joins must agree."""

    max_params: int
    space: str = "builtin"  # or FILE.py:NAME, a function of a trial returning (model, recipe settings)
    epochs: tuple[int, ...] = (15,)  # the epoch counts the built-in space chooses from
    validation: int = VALIDATION  # the last this-many training images score the trials
    train_size: int | None = None  # train on the first N of the rest (default: all of it)
    seed: int = 1  # every trial trains this one seed (docs/search.md says why)
    last_k: int = LAST_K
    precision: str = "auto"

    def to_attrs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> SearchConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items() if k in fields}
        return cls(**values)


# --- spaces ---------------------------------------------------------------------------------------------------

def builtin_space(trial, epochs: tuple[int, ...]) -> tuple[str, dict]:  # noqa: ANN001 - an optuna Trial
    """A model of the `tiny` family (models.tiny) and recipe settings for ``trial``."""
    layers = trial.suggest_int("layers", *LAYERS)
    widths = [trial.suggest_categorical("w1", FIRST_WIDTHS), trial.suggest_categorical("w2", SECOND_WIDTHS)]
    widths += [trial.suggest_categorical("body", BODY_WIDTHS)] * (layers - 2)
    arch = {"w": ".".join(map(str, widths)), "pool": trial.suggest_int("pool", *POOLS),
            "sep": trial.suggest_categorical("sep", SEPS), "sq": trial.suggest_categorical("sq", SQUEEZES)}
    n_epochs = trial.suggest_categorical("epochs", epochs) if len(epochs) > 1 else epochs[0]
    hold = trial.suggest_int("hold", HOLD_RANGE[0], min(HOLD_RANGE[1], n_epochs - 1))
    strength = trial.suggest_float("augment", *AUGMENT_RANGE)
    settings = {"epochs": n_epochs, "batch_size": trial.suggest_categorical("batch_size", BATCHES),
                "lr": trial.suggest_float("lr", *LR_RANGE, log=True), "cycle_epochs": n_epochs - hold,
                "rotate": round(ROTATE * strength, 3), "shift": round(SHIFT * strength, 4),
                "scale": round(SCALE * strength, 4)}
    return f"tiny:{format_args(arch)}", settings


BASE_RECIPE = Recipe(model="tiny:w=8", optimizer="sgd", momentum=0.9, nesterov=True, schedule="onecycle",
                     warmup=0.2, final_lr=0.005)


def sample(trial, config: SearchConfig) -> Recipe:  # noqa: ANN001
    """The recipe (model included) ``config``'s space gives ``trial``; a user space's failure is one sentence."""
    if config.space == "builtin":
        model, settings = builtin_space(trial, config.epochs)
    else:
        path, name, _ = split_user_model(config.space)
        try:
            _, settings = user_space(path, name)(trial)
        except (TinyMnistError, optuna_module().TrialPruned):
            raise
        except Exception as e:  # noqa: BLE001 - whatever the user's space raises, one sentence names it
            raise UsageError(f"the search space {config.space} failed ({type(e).__name__}: {e}); fix the "
                             f"function (it takes an Optuna trial and returns (model, recipe settings)).") from None
        if not isinstance(settings, dict):
            raise UsageError(f"the search space {config.space} returned {type(settings).__name__} as recipe "
                             f"settings; return (model, dict of recipe settings), e.g. (net, {{'lr': 0.1}}).")
        model = f"{config.space}:{format_args(trial.params)}"
    try:
        return BASE_RECIPE.with_overrides(model=model, seed=config.seed, **settings)
    except UsageError as e:
        raise UsageError(f"the search space {config.space} gave a recipe that cannot train: {e}") from None


def probe_space(config: SearchConfig, samples: int = PROBE) -> int:
    """Sample ``samples`` models from the space at random (no training): a space that fails, or whose every
    model is above ``max_params``, is refused before a study starts. Returns the smallest parameter count."""
    optuna = optuna_module()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    smallest = None
    for _ in range(samples):
        trial = study.ask()
        recipe = sample(trial, config)
        params = count_params(create_model(recipe.model))
        smallest = params if smallest is None else min(smallest, params)
        study.tell(trial, 0.0)
        if smallest <= config.max_params:
            return smallest
    raise UsageError(f"--max-params {config.max_params:,} is below every model sampled from the space "
                     f"{config.space} ({samples} samples, the smallest has {smallest:,} parameters); raise it.")


# --- storage and study ----------------------------------------------------------------------------------------

def shown_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - shown as given when it does not even parse
        return url


def open_storage(url: str, heartbeat: int = HEARTBEAT):  # noqa: ANN201 - an optuna RDBStorage
    """An RDB storage with heartbeats: a trial whose worker stops beating for 3 heartbeats is failed and retried
    (up to MAX_RETRY times) as a new trial linked to it. Bad URLs and unreachable databases are one sentence."""
    optuna = optuna_module()
    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat and its retry
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as e:
        raise UsageError(f"--storage {shown_url(url)!r} is not a database URL SQLAlchemy knows ({e}); use e.g. "
                         f"sqlite:///search.db or postgresql://USER@HOST/DB.") from None
    except ImportError as e:
        raise UsageError(f"--storage {shown_url(url)!r} needs a database driver that is not installed ({e}).") \
            from None
    except Exception as e:  # noqa: BLE001 - connection refused, unknown host, bad password, unwritable file
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UsageError(f"cannot open the study storage {shown_url(url)} ({reason}); check the URL and that "
                         f"the database is running and reachable.") from None


def open_study(storage, name: str, config: SearchConfig | None = None):  # noqa: ANN001, ANN201
    """Load study ``name``; with ``config``, create it when new, or check that it asks the same question."""
    optuna = optuna_module()
    if config is None:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler(), pruner=pruner())
        except KeyError:
            known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise UsageError(f"no study {name!r} in this storage (studies: {', '.join(known) or 'none'}).") from None
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=sampler(), pruner=pruner())
    recorded = study.user_attrs
    if not recorded:
        for key, value in config.to_attrs().items():
            study.set_user_attr(key, value)
        study.set_user_attr("pruner", PRUNER)
    else:
        mine = config.to_attrs()
        for key, value in mine.items():
            if recorded.get(key) != value:
                raise UsageError(f"study {name!r} was created with {key} = {recorded.get(key)!r}, not {value!r}; "
                                 f"give the same settings to join it, or another --study name.")
    return study


def sampler():  # noqa: ANN201
    """TPE; with several workers, a running trial counts as a bad result (constant liar) so that they spread."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        return optuna.samplers.TPESampler(n_startup_trials=10, multivariate=True, group=True, constant_liar=True)


PRUNER = (f"a trial is stopped after epoch e when its validation accuracy is below the median of the finished "
          f"trials with the same number of epochs at epoch e (at least {PRUNE_PEERS} of them), from epoch "
          f"{PRUNE_WARMUP + 1} until the last K epochs begin: those are the score, and a trial that reached them "
          f"finishes")


def pruner():  # noqa: ANN201
    """Prune a trial whose validation accuracy at epoch e is below the median of the finished trials with the
    same number of epochs at epoch e. Optuna's MedianPruner compares every trial at the same epoch, which
    would cut a 15-epoch one-cycle run (still at a high LR at epoch 5) against 6-epoch runs already decayed.
    No pruning before epoch PRUNE_WARMUP + 1, nor with fewer than PRUNE_PEERS such trials, nor once the
    trial's last K epochs (its score) have begun (its user attribute ``prune_until``)."""
    optuna = optuna_module()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    class SameLengthMedianPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:  # noqa: ANN001
            step = trial.last_step
            if step is None or step < PRUNE_WARMUP or step > trial.user_attrs.get("prune_until", step):
                return False
            epochs = trial.user_attrs.get("epochs")
            peers = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=finished)
                     if t.user_attrs.get("epochs") == epochs and step in t.intermediate_values]
            return len(peers) >= PRUNE_PEERS and trial.intermediate_values[step] < statistics.median(peers)

    return SameLengthMedianPruner()


# --- trials ---------------------------------------------------------------------------------------------------

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def objective(config: SearchConfig, data, options: Options) -> Callable:  # noqa: ANN001
    """The function a worker's study optimizes: train the sampled recipe one epoch at a time, report each
    epoch's validation accuracy, and return the worst of the last ``last_k``."""
    optuna = optuna_module()
    from .engine import Trainer

    def run(trial) -> float:  # noqa: ANN001
        recipe = sample(trial, config)
        trainer = Trainer(recipe, data, options)  # builds the model (cheap): its size decides whether it trains
        params = count_params(trainer.model)
        trial.set_user_attr("model", recipe.model)
        trial.set_user_attr("params", params)
        trial.set_user_attr("epochs", recipe.epochs)
        trial.set_user_attr("prune_until", recipe.epochs - config.last_k)
        trial.set_user_attr("recipe", dataclasses.asdict(recipe))
        trial.set_user_attr("worker", worker_id())
        if params > config.max_params:
            trial.set_user_attr(OVER_BUDGET, True)
            raise optuna.TrialPruned(f"{params} parameters > {config.max_params}")
        trial.set_user_attr("precision", trainer.precision)
        accs, start = [], time.perf_counter()
        while trainer.epoch < recipe.epochs:
            try:
                acc = trainer.run_epoch()["test_acc"]  # the trainer's held-out set is the validation split here
            except TrainingError as e:  # the loss diverged: a bad trial, not a broken search
                trial.set_user_attr("diverged", str(e))
                raise optuna.TrialPruned(str(e)) from None
            accs.append(acc)
            trial.set_user_attr("val_acc", accs)
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            trial.report(acc, trainer.epoch)
            if trainer.epoch < recipe.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {trainer.epoch}")
        return min(accs[-min(config.last_k, len(accs)):])

    return run


def counts(study) -> dict[str, int]:  # noqa: ANN001
    """Trials by state; ``trained``: complete or pruned after training (over-budget samples are not)."""
    optuna = optuna_module()
    states = optuna.trial.TrialState
    result = {s.name.lower(): 0 for s in states}
    result["trained"] = 0
    for t in study.get_trials(deepcopy=False):
        result[t.state.name.lower()] += 1
        if t.state in (states.COMPLETE, states.PRUNED) and not t.user_attrs.get(OVER_BUDGET):
            result["trained"] += 1
    return result


def work_left(study, trials: int) -> bool:  # noqa: ANN001
    c = counts(study)
    return c["trained"] < trials or c["waiting"] > 0


def worker_loop(url: str, name: str, trials: int, threads: int, heartbeat: int, data_dir: str | None) -> None:
    """One worker: trial after trial until the study has ``trials`` trained trials and none waiting (a retry)."""
    storage = open_storage(url, heartbeat)
    study = open_study(storage, name)
    config = SearchConfig.from_attrs(study.user_attrs)
    data = load_validation_split(data_dir, config.validation, config.train_size)
    options = Options(precision=config.precision, threads=threads)
    run = objective(config, data, options)
    while work_left(study, trials):
        study.optimize(run, n_trials=1, catch=(), gc_after_trial=False)


def _worker_main(url: str, name: str, trials: int, threads: int, heartbeat: int, data_dir: str | None,
                 errors: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    warnings.simplefilter("ignore")
    try:
        worker_loop(url, name, trials, threads, heartbeat, data_dir)
    except TinyMnistError as e:
        errors.put(str(e))
        raise SystemExit(2) from None


def search(url: str, name: str, config: SearchConfig, trials: int, workers: int = 1, heartbeat: int = HEARTBEAT,
           data_dir: str | None = None, on_trial: Callable[[object], None] | None = None,
           on_note: Callable[[str], None] | None = None) -> object:
    """Run (or join) study ``name`` in ``url`` with ``workers`` local worker processes until it has ``trials``
    trained trials; returns the study. ``on_trial`` gets each trial that finishes (from any worker or host)."""
    from .runner import cpu_cores

    storage = open_storage(url, heartbeat)
    probe_space(config)
    load_validation_split(data_dir, config.validation, config.train_size)  # missing files fail here, once
    study = open_study(storage, name, config)
    optuna = optuna_module()
    threads = max(1, cpu_cores() // workers)
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    dead: set[str] = set()
    running: list[multiprocessing.process.BaseProcess] = []

    def start() -> None:
        process = ctx.Process(target=_worker_main, daemon=True,
                              args=(url, name, trials, threads, heartbeat, data_dir, errors))
        process.start()
        running.append(process)

    def report() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in shown:
                shown.add(t.number)
                if on_trial:
                    on_trial(t)

    try:
        while work_left(study, trials) or _orphans(study, dead):
            if not running and _orphans(study, dead):  # wait out the heartbeat grace, then fail and retry them
                time.sleep(heartbeat)
                optuna.storages.fail_stale_trials(study)
                report()
                continue
            for _ in range(workers - len(running)):
                start()
            while running:
                time.sleep(1)
                report()
                for process in list(running):
                    if process.exitcode is None:
                        continue
                    running.remove(process)
                    if process.exitcode == 2:
                        raise UsageError(errors.get(timeout=5))
                    if process.exitcode != 0:
                        dead.add(f"{socket.gethostname()}:{process.pid}")
                        if on_note:
                            on_note(f"worker {process.pid} stopped (exit code {process.exitcode}); its trial "
                                    f"is marked failed after {3 * heartbeat} s without a heartbeat and tried "
                                    f"again as a new trial.")
                        if work_left(study, trials):
                            start()
        report()
    finally:
        for process in running:
            process.terminate()
            process.join()
    return study


def _orphans(study, dead: set[str]) -> bool:  # noqa: ANN001
    """Whether a trial of a worker of ours that died is still marked running."""
    optuna = optuna_module()
    return any(t.user_attrs.get("worker") in dead
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


# --- exports ----------------------------------------------------------------------------------------------------

def export(study) -> dict:  # noqa: ANN001
    """A study as plain JSON data: its settings and every trial with its parameters, state, value and curve."""
    optuna = optuna_module()

    def retried(trial) -> int | None:  # noqa: ANN001
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)

    return {
        "study": study.study_name, "direction": study.direction.name.lower(),
        "config": {k: v for k, v in study.user_attrs.items() if k != "pruner"},
        "pruner": study.user_attrs.get("pruner"),
        "optuna": optuna.__version__,
        "trials": [{
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "model": t.user_attrs.get("model"), "n_params": t.user_attrs.get("params"),
            "recipe": t.user_attrs.get("recipe"), "val_acc": t.user_attrs.get("val_acc", []),
            "seconds": t.user_attrs.get("seconds"), "over_budget": bool(t.user_attrs.get(OVER_BUDGET)),
            "retry_of": retried(t), "worker": t.user_attrs.get("worker"), "diverged": t.user_attrs.get("diverged"),
            "precision": t.user_attrs.get("precision"),
            # set by hand with study.enqueue_trial (a retry has fixed parameters too, and says so above)
            "enqueued": "fixed_params" in t.system_attrs and "failed_trial" not in t.system_attrs,
            "start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "end": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
        } for t in study.get_trials(deepcopy=False)],
    }


def trial_recipe(exported: dict, number: int) -> Recipe:
    """The recipe trial ``number`` of an exported study trained (its model rebuildable from the name alone)."""
    for t in exported["trials"]:
        if t["number"] == number:
            if not t.get("recipe"):
                raise UsageError(f"trial {number} of study {exported['study']!r} sampled no recipe (state "
                                 f"{t['state']}).")
            return recipe_from_dict(t["recipe"])
    raise UsageError(f"study {exported['study']!r} has no trial {number}.")

