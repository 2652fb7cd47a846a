"""The search's study: where it is stored (any SQLAlchemy URL, with heartbeats), how it samples and prunes,
what it has done (counts), and its export as plain JSON (evidence/studies/*.json)."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
import warnings

from tinymnist.errors import UsageError
from tinymnist.runs.records import recipe_from_dict
from tinymnist.search.analysis import upgrade_export, upgrade_trial_attrs
from tinymnist.search.space import OVER_BUDGET, SearchConfig, optuna_module
from tinymnist.training.recipes import Recipe
from tinymnist.training.schedule import lr_at

HEARTBEAT = 10  # seconds between a running trial's heartbeats; after 3 missed ones it is failed and retried
MAX_RETRY = 2  # a failed trial is tried again this many times, each as a new trial linked to it
DECAYED = 0.25  # a trial may be cut once its LR has fallen to this share of its peak, not before
PRUNE_PEERS = 4  # finished trials of the same length needed before one is pruned
CLAIMS = "tinymnist_claims"  # the storage's table of claims: what only one process may do


def shown_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # shown as given when it does not even parse
        return url


def open_storage(url: str, heartbeat: int = HEARTBEAT):  # an optuna RDBStorage
    """An RDB storage with heartbeats: a trial whose worker stops beating for 3 heartbeats is failed and retried
    (up to MAX_RETRY times) as a new trial linked to it. Bad URLs and unreachable databases are one sentence."""
    optuna = optuna_module()
    import sqlalchemy.exc

    sqlite = url.startswith("sqlite")
    kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat and its retry
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        if sqlite:
            serialize_sqlite(storage.engine)
        return storage
    except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as e:
        raise UsageError(f"--storage {shown_url(url)!r} is not a database URL SQLAlchemy knows ({e}); use e.g. "
                         f"sqlite:///search.db or postgresql://USER@HOST/DB.") from None
    except ImportError as e:
        raise UsageError(f"--storage {shown_url(url)!r} needs a database driver that is not installed ({e}).") \
            from None
    except Exception as e:  # connection refused, unknown host, bad password, unwritable file
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UsageError(f"cannot open the study storage {shown_url(url)} ({reason}); check the URL and that "
                         f"the database is running and reachable.") from None


def serialize_sqlite(engine) -> None:  # a SQLAlchemy engine
    """Make every transaction on a SQLite storage take the database's write lock when it begins (BEGIN
    IMMEDIATE). Python's sqlite3 starts a transaction only at the first write, so two workers could both read a
    queued trial as waiting and both take it (Optuna's SELECT ... FOR UPDATE is a no-op on SQLite): measured,
    3 processes popping 40 queued trials took 46-51. PostgreSQL locks the row and needs none of this."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts every transaction

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened while the storage checked its schema had no such hooks


def open_study(storage, name: str, config: SearchConfig | None = None):
    """Load study ``name``; with ``config``, create it when new, or check that it asks the same question. A
    setting the study did not record reads as what studies did before it existed."""
    optuna = optuna_module()
    if config is None:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(), pruner=pruner())
        except KeyError:
            known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise UsageError(f"no study {name!r} in this storage (studies: {', '.join(known) or 'none'}).") from None
        study.sampler = sampler(SearchConfig.from_attrs(study.user_attrs).design)
        return study
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=sampler(config.design), pruner=pruner())
    recorded = study.user_attrs
    if not recorded:
        for key, value in config.to_attrs().items():
            study.set_user_attr(key, value)
        study.set_user_attr("pruner", PRUNER)
    else:
        mine, theirs = config.to_attrs(), SearchConfig.from_attrs(recorded).to_attrs()
        for key, value in mine.items():
            if theirs.get(key) != value:
                raise UsageError(f"study {name!r} was created with {key} = {theirs.get(key)!r}, not {value!r}; "
                                 f"give the same settings to join it, or another --study name.")
    return study


def sampler(design: int = 0):
    """TPE; with several workers, a running trial counts as a bad result (constant liar) so that they spread.
    Its random start-up is the study's initial design when it has one (``design`` enqueued trials, every one
    in budget, so each is trained), else 10 samples."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        return optuna.samplers.TPESampler(n_startup_trials=design or 10, multivariate=True, group=True,
                                          constant_liar=True)


def prune_window(recipe: Recipe, last_k: int) -> tuple[int, int]:
    """(first, last): the epochs after which a trial of ``recipe`` may be cut. First: the first epoch that ends
    with the LR at or below DECAYED x its peak (before it, accuracy swings with the LR, and a cut ranks noise).
    Last: the epoch before the last ``last_k`` (those are the score: a trial that reaches them finishes).
    first > last: never cut."""
    batches = 100  # any count: the LR at an epoch's end does not depend on it
    ends = [lr_at(recipe, e, batches - 1, batches) for e in range(recipe.epochs)]
    first = next((e for e in range(1, recipe.epochs + 1) if max(ends[e - 1:]) <= DECAYED * recipe.lr),
                 recipe.epochs + 1)  # from then on the LR stays low (a warm-up's low start does not count)
    return first, recipe.epochs - last_k


PRUNER = (f"late median pruning: a trial is stopped after epoch e when its validation accuracy is below the "
          f"median of the finished trials with the same number of epochs at epoch e (at least "
          f"{PRUNE_PEERS} of them), only once its LR has fallen to {DECAYED:g} x its peak and before its last K "
          f"epochs begin: those are the score, and a trial that reached them finishes")


def pruner():
    """Prune a trial whose validation accuracy at epoch e is below the median of the finished trials with the
    same number of epochs at epoch e, only inside the trial's window (user attributes ``prune_from`` and
    ``prune_until``, from prune_window): never at peak LR, never inside the scoring window, and never a
    re-scoring trial (its seeds' mean is the recipe's level only if every seed is trained to the end). Optuna's
    MedianPruner compares every trial at the same epoch, which would cut a 15-epoch one-cycle run (still at a
    high LR at epoch 5) against 6-epoch runs already decayed; its SuccessiveHalvingPruner places rungs from
    the first epochs on."""
    optuna = optuna_module()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    class LateMedianPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            step, attrs = trial.last_step, upgrade_trial_attrs(trial.user_attrs)
            if step is None or "rescore_of" in attrs or not attrs["prune_from"] <= step \
                    <= attrs.get("prune_until", step):
                return False  # a re-scoring trial measures a seed of a chosen recipe: cut, it would bias the mean
            epochs = attrs.get("epochs")
            peers = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=finished)
                     if t.user_attrs.get("epochs") == epochs and step in t.intermediate_values]
            return len(peers) >= PRUNE_PEERS and trial.intermediate_values[step] < statistics.median(peers)

    return LateMedianPruner()


@functools.lru_cache(maxsize=1)
def _claims():  # a SQLAlchemy Table
    import sqlalchemy as sa

    return sa.Table(CLAIMS, sa.MetaData(), sa.Column("study", sa.String(512), primary_key=True),
                    sa.Column("key", sa.String(255), primary_key=True), sa.Column("at", sa.Float, nullable=False))


def claim(storage, study: str, key: str, stale_after: float | None = None) -> bool:
    """Whether this process is the one to do ``key`` in ``study`` (an insert into a table keyed by study and key:
    of the processes and hosts that ask at once, exactly one gets True). With ``stale_after``, a claim made that
    many seconds ago by a process that did not act on it is taken over (compare-and-set on its time)."""
    import sqlalchemy as sa

    table, now = _claims(), time.time()
    with contextlib.suppress(sa.exc.SQLAlchemyError):  # created by another process between check and create
        table.create(storage.engine, checkfirst=True)
    try:
        with storage.engine.begin() as conn:
            conn.execute(table.insert().values(study=study, key=key, at=now))
        return True
    except sa.exc.IntegrityError:
        if stale_after is None:
            return False
    where = (table.c.study == study) & (table.c.key == key)
    with storage.engine.begin() as conn:
        at = conn.execute(sa.select(table.c.at).where(where)).scalar()
        return at is not None and now - at > stale_after and \
            conn.execute(table.update().where(where & (table.c.at == at)).values(at=now)).rowcount == 1


def enqueue_design(study, storage, design: list[dict], trials: int) -> int:
    """Enqueue the points of ``design`` the study does not have yet (trained, running or waiting), in order and
    as many as its ``trials`` leave room for; each point is claimed first, so that it is enqueued once whatever
    the number of workers and hosts. Returns how many were enqueued. The design is thus trained first, and only
    as far as the study's --trials go."""
    c = counts(study)
    room = trials - c["trained"] - c["running"] - c["waiting"]
    have = [t.params or t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)
            if t.state != optuna_module().trial.TrialState.FAIL]
    added = 0
    for i, params in enumerate(design):
        if added >= room:
            break
        if not any(p.items() >= params.items() for p in have) and claim(storage, study.study_name, f"design:{i}"):
            study.enqueue_trial(params, user_attrs={"design": True})
            added += 1
    return added


def claim_start(study, storage, trials: int, grace: float) -> bool | None:
    """Whether this worker may start the study's next trial now: a waiting one (a retry, a design or re-scoring
    trial), else a new one while fewer than ``trials`` are trained, running or waiting. Every start claims the
    study's state (trials in all, trials waiting), which each start changes, so two workers never both start
    the last trial the count allows, nor both take one waiting trial. False: not now (another worker started
    one; or trials still running may yet end untrained, over budget); None: nothing left to start."""
    every = study.get_trials(deepcopy=False)
    c = counts(study, every)
    if not c["waiting"] and c["trained"] >= trials:
        return None
    if not c["waiting"] and c["trained"] + c["running"] >= trials:
        return False
    return claim(storage, study.study_name, f"start:{len(every)}:{c['waiting']}", grace)


def counts(study, trials: list | None = None) -> dict[str, int]:
    """Trials by state (of ``trials``: the study's, by default); ``trained``: complete or pruned after training
    (over-budget samples are not)."""
    optuna = optuna_module()
    states = optuna.trial.TrialState
    result = {s.name.lower(): 0 for s in states}
    result["trained"] = 0
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        result[t.state.name.lower()] += 1
        if t.state in (states.COMPLETE, states.PRUNED) and not t.user_attrs.get(OVER_BUDGET):
            result["trained"] += 1
    return result


def fail_stale(study) -> None:
    """Fail the trials whose worker stopped beating (another host, a killed process); the storage's callback
    queues each again as a retry."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def export(study) -> dict:
    """A study as plain JSON data: its settings and every trial with its parameters, state, value and curve."""
    optuna = optuna_module()

    def retried(trial) -> int | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)

    return upgrade_export({  # a study made by an earlier version records what its export format 1 did
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
            "precision": t.user_attrs.get("precision"), "compiled": t.user_attrs.get("compiled"),
            "seed": t.user_attrs.get("seed"),
            "level": t.user_attrs.get("level"), "worst": t.user_attrs.get("worst"),
            "rescore_of": t.user_attrs.get("rescore_of"), "design": bool(t.user_attrs.get("design")),
            "fold": t.user_attrs.get("fold"),
            # set by hand with study.enqueue_trial (a retry has fixed parameters too, and says so above)
            "enqueued": "fixed_params" in t.system_attrs and "failed_trial" not in t.system_attrs,
            "start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "end": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
        } for t in study.get_trials(deepcopy=False)],
    })


def trial_recipe(exported: dict, number: int) -> Recipe:
    """The recipe trial ``number`` of an exported study trained (its model rebuildable from the name alone)."""
    for t in exported["trials"]:
        if t["number"] == number:
            if not t.get("recipe"):
                raise UsageError(f"trial {number} of study {exported['study']!r} sampled no recipe (state "
                                 f"{t.get('state')}).")
            return recipe_from_dict(t["recipe"])
    raise UsageError(f"study {exported['study']!r} has no trial {number}.")

