"""The search: tiny studies on SQLite and on a real PostgreSQL server, with two worker processes, a worker killed
mid-trial, no test files on disk, and every bad input a user can give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import synthetic_digits, write_mnist
from tinymnist.models import count_params, create_model

optuna = pytest.importorskip("optuna", reason="the [search] extra is not installed")

from tinymnist.runs.records import RunRecord  # noqa: E402
from tinymnist.search import space as search_space  # noqa: E402 - after the skip
from tinymnist.search import study as search_study  # noqa: E402

TINY = ["--epochs", "2,3", "--subset", "1500", "--validation", "500", "--max-params", "3000"]


@pytest.fixture(scope="module")
def train_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training files only: the test files are not on disk, so a search that opened them would fail."""
    directory = write_mnist(tmp_path_factory.mktemp("train-only"), 2500, 10)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (directory / name).unlink()
    return directory


def tinymnist(*args: str, data: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"TINYMNIST_DATA": str(data)} if data else {})}
    return subprocess.run([sys.executable, "-m", "tinymnist", *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


def exported(storage: str, study: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{study}.json"
    result = tinymnist("search-export", "--storage", storage, "--study", study, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def check_complete(data: dict, trained: int, exactly: bool = False) -> None:
    """Every trial number once, none left running or waiting, at least ``trained`` trained trials (``exactly``:
    that many), and each point of the initial design enqueued once (a retry repeats its failed trial's)."""
    numbers = [t["number"] for t in data["trials"]]
    assert numbers == list(range(len(numbers)))
    states = [t["state"] for t in data["trials"]]
    assert "running" not in states and "waiting" not in states
    done = [t for t in data["trials"] if t["state"] in ("complete", "pruned") and not t["over_budget"]]
    assert len(done) == trained if exactly else len(done) >= trained
    design = [json.dumps(t["params"], sort_keys=True) for t in data["trials"] if t["design"] and t["retry_of"] is None]
    assert len(design) == len(set(design)), design
    for t in done:
        assert t["n_params"] <= data["config"]["max_params"]
        assert len(t["val_acc"]) >= 1 and t["model"].startswith("tiny:")
        assert t["compiled"] is False  # short trials: --compile auto leaves them uncompiled, and the export says so


# --- the family and the space -----------------------------------------------------------------------------------

@pytest.mark.parametrize("space", search_space.SPACES)
def test_builtin_space_samples_valid_recipes(space: str) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    config = search_space.SearchConfig(max_params=10_000, epochs=(6, 8, 10), space=space)
    for _ in range(80):
        trial = study.ask()
        recipe = search_space.sample(trial, config)
        recipe.check()
        assert recipe.epochs in (6, 8, 10) and 1 <= recipe.cycle_epochs <= recipe.epochs
        count_params(create_model(recipe.model))
        study.tell(trial, 0.0)


def test_pruner_compares_trials_of_the_same_length_only() -> None:
    study = optuna.create_study(direction="maximize", pruner=search_study.pruner())
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for epochs, accs in [(15, [90, 95, 97, 98.0]), (15, [90, 95, 97, 98.2]), (15, [90, 95, 97, 98.6]),
                         (15, [90, 95, 97, 98.8]), (6, [96, 98, 99, 99.2])] + [(6, [96, 98, 99, 99.3])] * 3:
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, value=accs[-1], user_attrs={"epochs": epochs},
            intermediate_values=dict(enumerate(accs, 1))))
    trial = study.ask()
    trial.set_user_attr("epochs", 15)
    trial.report(98.5, 4)  # below the 6-epoch runs at epoch 4, above the median (98.4) of the 15-epoch runs
    assert not trial.should_prune()
    trial.report(98.1, 5)  # no 15-epoch run reached epoch 5 yet: nothing to compare with
    assert not trial.should_prune()
    other = study.ask()
    other.set_user_attr("epochs", 15)
    other.report(98.1, 4)  # below the median (98.4) of its peers
    assert other.should_prune()
    scoring = study.ask()
    scoring.set_user_attr("epochs", 15)
    scoring.set_user_attr("prune_until", 3)  # its last K epochs, the score, began after epoch 3
    scoring.report(98.1, 4)
    assert not scoring.should_prune()
    rescoring = study.ask()  # another seed of a chosen recipe: its level counts only if trained to the end
    rescoring.set_user_attr("epochs", 15)
    rescoring.set_user_attr("rescore_of", 0)
    rescoring.report(98.1, 4)
    assert not rescoring.should_prune()


@pytest.mark.parametrize("recipe", [
    search_space.BASE_RECIPE.with_overrides(epochs=e, cycle_epochs=c, warmup=w, lr=0.2)
    for e, c, w in [(15, 11, 0.2), (15, 15, 0.2), (15, 11, 0.5), (8, 6, 0.2), (6, 6, 0.1), (3, 2, 0.2)]
] + [search_space.BASE_RECIPE.with_overrides(epochs=15, schedule="step", step_size=6, gamma=0.1, lr=0.05)])
def test_the_pruner_never_cuts_before_the_lr_has_decayed_nor_inside_the_scoring_window(recipe) -> None:
    from tinymnist.training.schedule import lr_at

    last_k = 5
    first, last = search_study.prune_window(recipe, last_k)
    study = optuna.create_study(direction="maximize", pruner=search_study.pruner())
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for _ in range(6):  # good peers of the same length, every epoch
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, value=99.5, user_attrs={"epochs": recipe.epochs},
            intermediate_values={e: 99.5 for e in range(1, recipe.epochs + 1)}))
    trial = study.ask()
    for key, value in (("epochs", recipe.epochs), ("prune_from", first), ("prune_until", last)):
        trial.set_user_attr(key, value)
    cut = []
    for epoch in range(1, recipe.epochs + 1):
        trial.report(90.0, epoch)  # far below its peers at every epoch
        if trial.should_prune():
            cut.append(epoch)
    for epoch in cut:
        later = [lr_at(recipe, e, 99, 100) for e in range(epoch - 1, recipe.epochs)]
        assert max(later) <= search_study.DECAYED * recipe.lr  # decayed by then, for good
        assert epoch <= recipe.epochs - last_k  # before the scoring window
    assert cut == list(range(first, last + 1))  # and inside its window it does cut a trial this bad


def test_the_initial_design_is_in_budget_and_covers_every_axis() -> None:
    from tinymnist.models import tiny_params

    for budget, space in ((2500, "builtin-2"), (4000, "builtin-2"), (8000, "builtin-2"), (4000, "builtin")):
        config = search_space.SearchConfig(max_params=budget, epochs=(6, 8), space=space)
        design = search_space.initial_design(config)
        assert len(design) == search_space.DESIGN
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for params in design:
            study.enqueue_trial(params)
            recipe = search_space.sample(study.ask(), config)
            assert count_params(create_model(recipe.model)) <= budget  # trained, never pruned as over budget
            assert recipe.epochs == 8 and recipe.lr == 0.2 and recipe.batch_size == 64
        for axis, values in (("sep", search_space.SEPS), ("sq", search_space.SQUEEZES),
                             ("pool", range(search_space.POOLS[0], search_space.POOLS[1] + 1)),
                             ("layers", range(search_space.LAYERS[0], search_space.LAYERS[1] + 1))):
            assert {p[axis] for p in design} == set(values), (budget, axis)
    assert search_space.builtin_architectures(2500) == 936  # the count issue 24 measured for frontier-2k5
    for model in ("tiny:w=8.16.24.24.24,pool=2,sep=2", "tiny:w=4.8.12.12,pool=1,sep=3,sq=16",
                  "tiny:w=8.16.16.16.16,pool=2,sq=8", "tiny:w=8.12.20.20.20.20,pool=3,sep=4,sq=8"):
        args = dict(kv.split("=") for kv in model[5:].split(","))
        assert tiny_params(args.pop("w"), **{k: int(v) for k, v in args.items()}) == count_params(create_model(model))


def test_rescoring_ranks_recipes_by_their_mean_level_over_seeds_not_by_one_draw() -> None:
    """A fake objective: recipe x = 0 is lucky on the screening seed (1) and poor on others; x = 1 is steady.
    Screening ranks 0 first; re-scoring on seeds 2-4 ranks 1 first, by its mean level."""
    from tinymnist.search.analysis import by_recipe, rescore_plan

    level = {(0, 1): 99.60, (0, 2): 99.20, (0, 3): 99.25, (0, 4): 99.15,
             (1, 1): 99.50, (1, 2): 99.45, (1, 3): 99.48, (1, 4): 99.44,
             (2, 1): 99.00, (2, 2): 99.00, (2, 3): 99.00, (2, 4): 99.00}
    config = search_space.SearchConfig(max_params=8000)

    def fake(trial) -> float:
        x, seed = trial.suggest_int("x", 0, 2), trial.user_attrs.get("seed", 1)
        accs = [level[x, seed] - 0.5] * 10 + [level[x, seed]] * 5
        for key, value in (("model", f"m{x}"), ("params", 1000 + x), ("seed", seed), ("val_acc", accs),
                           ("recipe", {"model": f"m{x}", "lr": 0.1 * x, "seed": seed})):
            trial.set_user_attr(key, value)
        return config.value(accs)

    study = optuna.create_study(direction="maximize")
    for key, value in config.to_attrs().items():
        study.set_user_attr(key, value)
    for x in range(3):
        study.enqueue_trial({"x": x})
    study.optimize(fake, n_trials=3)
    assert study.best_trial.params == {"x": 0}  # the screen alone picks the lucky draw
    plan = rescore_plan(search_study.export(study), top=2, seeds=[1, 2, 3, 4])
    assert sorted((p["x"], a["seed"]) for p, a in plan) == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]
    for params, attrs in plan:
        study.enqueue_trial(params, user_attrs=attrs)
    study.optimize(fake, n_trials=len(plan))
    assert rescore_plan(search_study.export(study), top=2, seeds=[2, 3, 4]) == []  # nothing left to add
    ranked = by_recipe(search_study.export(study))
    assert [g["model"] for g in ranked] == ["m1", "m0", "m2"]
    assert ranked[0]["mean"] == pytest.approx((99.50 + 99.45 + 99.48 + 99.44) / 4)
    assert sorted(ranked[0]["levels"]) == [1, 2, 3, 4] and ranked[0]["screen"] == 1
    study.add_trial(optuna.trial.create_trial(  # a re-scoring trial cut by an earlier pruner: measured nothing
        params={"x": 1}, distributions={"x": optuna.distributions.IntDistribution(0, 2)},
        state=optuna.trial.TrialState.PRUNED, user_attrs={"seed": 5, "rescore_of": 1}))
    assert sorted((p["x"], a["seed"]) for p, a in rescore_plan(search_study.export(study), top=2, seeds=[5])) == [
        (0, 5), (1, 5)]  # the pruned pair is queued again


# --- studies with two workers, a killed worker, on SQLite and on PostgreSQL ----------------------------------

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.integration
def test_two_workers_and_a_killed_one_leave_a_complete_study(storage: str, train_only: Path,
                                                             tmp_path: Path) -> None:
    """Two worker processes; one is killed with SIGKILL after its trial reported an epoch. Its trial is failed
    by the heartbeat and retried as a new trial; the study ends with every number once and nothing running."""
    args = ["search", "--storage", storage, "--study", "killed", "--workers", "2", "--trials", "6",
            "--heartbeat", "1", "--seed", "3", *TINY, "--epochs", "3", "--subset", "2000"]
    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TINYMNIST_DATA": str(train_only)})
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="killed", storage=storage)
            except KeyError:
                continue
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("val_acc") and t.user_attrs.get("worker"):
                    killed = t.number
                    os.kill(int(t.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
                    break
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert killed is not None, "no trial was caught running"
    assert proc.returncode == 0, err
    assert "stopped (exit code -9)" in out
    data = exported(storage, "killed", tmp_path)
    check_complete(data, 6, exactly=True)
    by_number = {t["number"]: t for t in data["trials"]}
    assert by_number[killed]["state"] == "fail"
    retries = [t for t in data["trials"] if t["retry_of"] == killed]
    assert retries and retries[0]["params"] == by_number[killed]["params"]
    assert {t["worker"] for t in data["trials"] if t["worker"]} >= {by_number[killed]["worker"]}


@pytest.mark.integration
def test_search_reads_no_test_files_and_joins_an_existing_study(train_only: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = tinymnist("search", "--storage", storage, "--study", "s", "--trials", "3", *TINY, data=train_only)
    assert first.returncode == 0, first.stderr
    assert "the test set is not read" in first.stdout
    again = tinymnist("search", "--storage", storage, "--study", "s", "--trials", "5", *TINY, data=train_only)
    assert again.returncode == 0, again.stderr
    data = exported(storage, "s", tmp_path)
    check_complete(data, 5)
    assert data["config"]["validation"] == 500 and data["config"]["train_size"] == 1500
    other = tinymnist("search", "--storage", storage, "--study", "s", "--trials", "5", *TINY[:-1], "2000",
                      data=train_only)
    assert other.returncode == 2 and "max_params = 3000" in other.stderr


@pytest.mark.integration
def test_a_search_killed_whole_is_finished_by_the_next_run_with_exactly_its_trials(storage: str, train_only: Path,
                                                                                  tmp_path: Path) -> None:
    """The search and both its workers killed with SIGKILL mid-trial; the same command again fails the trials
    they left running (their processes are gone), retries them, and ends with exactly --trials trained."""
    args = ["search", "--storage", storage, "--study", "whole", "--workers", "2", "--trials", "4",
            "--heartbeat", "1", *TINY, "--epochs", "3"]
    env = {**os.environ, "TINYMNIST_DATA": str(train_only)}
    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    left = []
    try:
        deadline = time.monotonic() + 300
        while not left and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="whole", storage=storage)
            except KeyError:
                continue
            left = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                    if t.user_attrs.get("val_acc")]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert left, "no trial was caught running"
    again = tinymnist(*args, data=train_only)
    assert again.returncode == 0, again.stderr
    data = exported(storage, "whole", tmp_path)
    check_complete(data, 4, exactly=True)
    by_number = {t["number"]: t for t in data["trials"]}
    for number in left:
        assert by_number[number]["state"] == "fail"
        assert [t["state"] for t in data["trials"] if t["retry_of"] == number] == ["complete"]


@pytest.mark.integration
def test_a_stale_trial_is_retried_by_the_next_run_even_when_the_count_is_met(train_only: Path,
                                                                            tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'met.db'}"
    first = tinymnist("search", "--storage", storage, "--study", "met", "--trials", "2", "--heartbeat", "1", *TINY,
                      data=train_only)
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="met", storage=search_study.open_storage(storage, heartbeat=1))
    study.enqueue_trial(study.trials[0].params)
    trial = study.ask()  # taken by a worker of another host that then stopped beating
    trial.set_user_attr("worker", "elsewhere:1")
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(4)  # past the grace of 3 heartbeats (the database keeps whole seconds)
    again = tinymnist("search", "--storage", storage, "--study", "met", "--trials", "2", "--heartbeat", "1", *TINY,
                      data=train_only)
    assert again.returncode == 0, again.stderr
    data = exported(storage, "met", tmp_path)
    check_complete(data, 3, exactly=True)  # the count was met: the retry is the only trial trained
    assert data["trials"][trial.number]["state"] == "fail"
    assert [t["state"] for t in data["trials"] if t["retry_of"] == trial.number] == ["complete"]


CLAIM = """
import sys
from tinymnist.search.study import claim, open_storage
storage = open_storage(sys.argv[1])
print(" ".join(k for k in map(str, range(int(sys.argv[2]))) if claim(storage, "c", k)))
"""


def test_a_claim_is_granted_to_one_process_of_many(tmp_path: Path) -> None:
    """Three processes claim the same 30 keys at once (as workers claim a design point or a start): each key is
    granted once. A claim left by a process that never acted on it is taken over only once it is stale."""
    url, keys = f"sqlite:///{tmp_path / 'c.db'}", 30
    search_study.open_storage(url)
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", CLAIM, url, str(keys)], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    granted = [int(k) for p in procs for k in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(granted) == list(range(keys))
    storage = search_study.open_storage(url)
    assert not search_study.claim(storage, "c", "0") and not search_study.claim(storage, "c", "0", stale_after=60)
    assert search_study.claim(storage, "c", "0", stale_after=0)  # stale: taken over, once
    assert search_study.claim(storage, "d", "0")  # another study's keys are its own


def test_a_design_point_another_process_claimed_is_not_enqueued_again(tmp_path: Path) -> None:
    """Two hosts that read the study before either enqueued: the second finds the first's claims."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    storage = search_study.open_storage(url)
    study = optuna.create_study(storage=storage, study_name="d", direction="maximize")
    design = [{"x": 0}, {"x": 1}, {"x": 2}]
    assert search_study.claim(storage, "d", "design:0")  # the other host's claim, its trial not yet enqueued
    assert search_study.enqueue_design(study, storage, design, trials=2) == 2
    assert search_study.enqueue_design(study, storage, design, trials=5) == 0  # each point once, whoever asks
    assert [t.system_attrs["fixed_params"] for t in study.get_trials()] == [{"x": 1}, {"x": 2}]


# --- a searched model loads without the study ------------------------------------------------------------------

SPACE = '''
import torch
from torch import nn


def space(trial):
    width = trial.suggest_int("width", 4, 8, step=4)
    model = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(width, 10))
    return model, {"lr": trial.suggest_float("lr", 0.05, 0.1), "epochs": 2}


def wild(trial):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return model, {"lr": trial.suggest_float("lr", 1e37, 1e38), "epochs": 2}


def broken(trial):
    trial.suggest_int("width", 4, 8)
    raise ValueError("no such layer")
'''


@pytest.mark.integration
def test_user_space_trials_confirm_and_reload_without_the_study(full_synthetic_dir: Path, tmp_path: Path) -> None:
    data_dir = full_synthetic_dir
    (tmp_path / "spaces.py").write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'u.db'}"
    result = tinymnist("search", "--storage", storage, "--study", "u", "--space", "spaces.py:space", "--trials", "2",
                       "--max-params", "1000", "--epochs", "2", "--subset", "700", "--validation", "300",
                       "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = exported(storage, "u", tmp_path)
    trial = next(t for t in data["trials"] if t["state"] == "complete")
    assert trial["model"].startswith("spaces.py:space:") and trial["recipe"]["lr"] == trial["params"]["lr"]
    (tmp_path / "u.db").unlink()  # the run records alone must rebuild the model
    confirm = tinymnist("search-confirm", str(tmp_path / "u.json"), "--trial", str(trial["number"]), "--seeds", "1",
                        "--space", "spaces.py:space",
                        "--subset", "700", "--runs", "runs", "--data-dir", str(data_dir), cwd=tmp_path)
    assert confirm.returncode == 0, confirm.stderr
    run = tmp_path / "runs" / "search" / "u" / f"trial-{trial['number']}" / "seed-1001"
    recorded = RunRecord(run).recipe().model  # recipe.json holds the file relative to the run; read back whole
    assert recorded == f"{(tmp_path / 'spaces.py').resolve()}:{trial['model'].partition('.py:')[2]}"
    evaluated = tinymnist("eval", str(run), "--data-dir", str(data_dir), cwd=tmp_path)
    assert evaluated.returncode == 0 and "matches the recorded" in evaluated.stdout, evaluated.stderr
    # a lever measured on the trial's exact recipe: the setting is applied and recorded as an override
    lever = tinymnist("search-confirm", str(tmp_path / "u.json"), "--trial", str(trial["number"]), "--space",
                      "spaces.py:space", "--seed-list",
                      "1001", "--elastic", "8", "--subset", "700", "--runs", "levers", "--data-dir", str(data_dir),
                      cwd=tmp_path)
    assert lever.returncode == 0, lever.stderr
    header = json.loads((tmp_path / "levers" / run.relative_to(tmp_path / "runs") / "recipe.json").read_text())
    assert header["recipe"]["elastic"] == 8 and header["overrides"]["elastic"] == 8
    assert header["origin"]["trial"] == trial["number"]


@pytest.mark.integration
def test_a_diverging_trial_is_pruned_and_the_search_goes_on(train_only: Path, tmp_path: Path) -> None:
    (tmp_path / "spaces.py").write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    result = tinymnist("search", "--storage", storage, "--study", "w", "--space", "spaces.py:wild", "--trials", "2",
                       *TINY[:-1], "8000", data=train_only, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = exported(storage, "w", tmp_path)
    assert [t["state"] for t in data["trials"]] == ["pruned", "pruned"]
    assert all("the loss became" in t["diverged"] for t in data["trials"])


# --- bad input: one sentence, exit 2, the study still readable ---------------------------------------------------

@pytest.fixture(scope="module")
def existing(train_only: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    where = tmp_path_factory.mktemp("existing")
    storage = f"sqlite:///{where / 'e.db'}"
    result = tinymnist("search", "--storage", storage, "--study", "e", "--trials", "2", *TINY, data=train_only)
    assert result.returncode == 0, result.stderr
    return storage, where


@pytest.mark.parametrize(("args", "words"), [
    (["--storage", "nosuchdb://x/y"], "not a database URL"),
    (["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "cannot open the study storage"),
    (["--space", "spaces.py:broken"], "ValueError: no such layer"),
    (["--space", "spaces.py:nothing"], "has no function nothing(trial)"),
    (["--max-params", "50"], "is below every model sampled"),
    (["--epochs", "20"], "from 1 to 15"),
])
@pytest.mark.integration
def test_bad_input_is_one_sentence_and_leaves_the_study_readable(args: list[str], words: str, train_only: Path,
                                                                 existing: tuple[str, Path]) -> None:
    storage, where = existing
    (where / "spaces.py").write_text(SPACE)
    base = ["search", "--storage", storage, "--study", "bad", "--trials", "2", *TINY]
    result = tinymnist(*base, *args, data=train_only, cwd=where)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    data = exported(storage, "e", where)
    check_complete(data, 2)


@pytest.mark.integration
def test_a_new_study_starts_with_its_design_and_rescoring_trains_the_best_recipe_on_another_seed(
        train_only: Path, existing: tuple[str, Path]) -> None:
    storage, where = existing
    before = exported(storage, "e", where)
    config = search_space.SearchConfig.from_attrs(before["config"])
    design = search_space.initial_design(config)
    assert [t["design"] for t in before["trials"]] == [True, True]  # the study's 2 trials: its design's first 2
    assert [{k: t["params"][k] for k in d} for t, d in zip(before["trials"], design, strict=False)] == design[:2]
    best = max((t for t in before["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    from tinymnist.search.analysis import rescore_plan

    study = search_study.open_study(search_study.open_storage(storage), "e")  # another host queued the pair and
    for params, attrs in rescore_plan(before, top=1, seeds=[2]):  # stopped before training it: it waits
        study.enqueue_trial(params, user_attrs=attrs)
    result = tinymnist("search-rescore", "--storage", storage, "--study", "e", "--top", "1", "--seeds", "2",
                       data=train_only)
    assert result.returncode == 0, result.stderr
    assert "nothing to add; the trials it had waiting were trained here" in result.stdout  # joined, not skipped
    after = exported(storage, "e", where)
    again = [t for t in after["trials"] if t.get("rescore_of") is not None]
    assert [(t["rescore_of"], t["seed"], t["state"]) for t in again] == [(best["number"], 2, "complete")]
    assert again[0]["recipe"] == {**best["recipe"], "seed": 2} and again[0]["model"] == best["model"]
    assert "2 seeds" in result.stdout and f"trial {best['number']}" in result.stdout
    repeat = tinymnist("search-rescore", "--storage", storage, "--study", "e", "--top", "1", "--seeds", "2",
                       data=train_only)
    assert repeat.returncode == 0 and "nothing to add" in repeat.stdout
    check_complete(after, 2)


@pytest.mark.integration
def test_rescoring_on_folds_trains_the_best_recipe_on_other_held_out_images(train_only: Path,
                                                                           existing: tuple[str, Path]) -> None:
    storage, where = existing
    before = exported(storage, "e", where)
    best = max((t for t in before["trials"] if t["state"] == "complete" and t["rescore_of"] is None),
               key=lambda t: t["value"])
    result = tinymnist("search-rescore", "--storage", storage, "--study", "e", "--top", "1", "--folds", "3",
                       data=train_only)
    assert result.returncode == 0, result.stderr
    after = exported(storage, "e", where)
    folds = [t for t in after["trials"] if t["fold"]]
    assert sorted((t["rescore_of"], t["seed"], t["fold"], t["state"]) for t in folds) == [
        (best["number"], 1, 1, "complete"), (best["number"], 1, 2, "complete")]  # at the study's seed
    assert all(t["recipe"] == best["recipe"] for t in folds)
    assert "3 folds" in result.stdout and f"trial {best['number']}" in result.stdout
    from tinymnist.search.analysis import by_recipe

    group = next(g for g in by_recipe(after) if g["screen"] == best["number"])
    assert sorted(group["folds"]) == [0, 1, 2] and group["folds"][0] == group["levels"][1]
    assert set(group["fold_trials"]) == {t["number"] for t in folds} and not set(group["trials"]) & {
        t["number"] for t in folds}  # the levels over seeds hold no fold
    too_many = tinymnist("search-rescore", "--storage", storage, "--study", "e", "--top", "1", "--folds", "9",
                         data=train_only)
    assert too_many.returncode == 2 and "fold 8" in too_many.stderr and "Traceback" not in too_many.stderr


def test_a_trial_of_a_fold_trains_on_that_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymnist.search import workers
    from tinymnist.training.recipes import Options

    seen = []
    monkeypatch.setattr(workers, "execute", lambda spec, data, sinks: seen.append(data))
    monkeypatch.setattr(workers.TrialSink, "score", lambda self: 0.0)
    run = workers.objective(search_space.SearchConfig(max_params=8000), lambda fold: f"fold {fold}", Options())
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={"fold": 2, "seed": 1, "rescore_of": 0})
    study.optimize(run, n_trials=2)
    assert seen == ["fold 2", "fold 0"]


def test_levels_over_folds_are_kept_apart_from_levels_over_seeds() -> None:
    """A recipe's levels over seeds (fold 0) and over folds (the study's seed) from a fake objective: neither
    mixes in the other, and the fold plan skips what is trained."""
    from tinymnist.search.analysis import by_recipe, rescore_plan

    level = {(0, 1, 0): 99.6, (0, 2, 0): 99.2, (0, 1, 1): 99.0, (0, 1, 2): 99.1,
             (1, 1, 0): 99.5, (1, 2, 0): 99.4, (1, 1, 1): 99.45, (1, 1, 2): 99.5}
    config = search_space.SearchConfig(max_params=8000)

    def fake(trial) -> float:
        x, seed, fold = trial.suggest_int("x", 0, 1), trial.user_attrs.get("seed", 1), trial.user_attrs.get("fold")
        accs = [level[x, seed, fold or 0]] * 5
        for key, value in (("model", f"m{x}"), ("params", 1000 + x), ("seed", seed), ("val_acc", accs),
                           ("recipe", {"model": f"m{x}", "lr": 0.1 * x, "seed": seed})):
            trial.set_user_attr(key, value)
        return config.value(accs)

    study = optuna.create_study(direction="maximize")
    for key, value in config.to_attrs().items():
        study.set_user_attr(key, value)
    for x in range(2):
        study.enqueue_trial({"x": x})
    study.optimize(fake, n_trials=2)
    plan = rescore_plan(search_study.export(study), top=2, seeds=[2], folds=3)
    assert sorted((p["x"], a["seed"], a.get("fold")) for p, a in plan) == [
        (0, 1, 1), (0, 1, 2), (0, 2, None), (1, 1, 1), (1, 1, 2), (1, 2, None)]
    for params, attrs in plan:
        study.enqueue_trial(params, user_attrs=attrs)
    study.optimize(fake, n_trials=len(plan))
    assert rescore_plan(search_study.export(study), top=2, seeds=[2], folds=3) == []
    m0, m1 = sorted(by_recipe(search_study.export(study)), key=lambda g: g["model"])
    assert m0["levels"] == {1: 99.6, 2: 99.2} and m0["folds"] == {0: 99.6, 1: 99.0, 2: 99.1}
    assert m0["mean"] == pytest.approx(99.4) and m0["fold_mean"] == pytest.approx((99.6 + 99.0 + 99.1) / 3)
    assert m1["fold_mean"] == pytest.approx((99.5 + 99.45 + 99.5) / 3) and m1["fold_sd"] > 0
    assert len(m0["trials"]) == 2 and len(m0["fold_trials"]) == 2


@pytest.mark.integration
def test_a_missing_optuna_is_one_sentence(train_only: Path, tmp_path: Path) -> None:
    (tmp_path / "optuna.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TINYMNIST_DATA": str(train_only)}
    result = subprocess.run([sys.executable, "-m", "tinymnist", "search", "--max-params", "3000"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "pip install 'tinymnist[search]'" in result.stderr


def test_validation_split_never_opens_the_test_files(train_only: Path) -> None:
    from tinymnist.data import load_validation_split

    data = load_validation_split(train_only, validation=500, train=1000)
    images, labels = synthetic_digits(2500, 0)
    assert data.held_out_labels.tolist() == labels[-500:].tolist()
    assert data.train_labels.tolist() == labels[:1000].tolist()


def test_a_trial_left_running_by_a_stopped_host_is_failed_and_queued_again(tmp_path: Path) -> None:
    """What `search-rescore` does first: a re-scoring pair a stopped host left running is trained again, not
    taken for trained."""
    from tinymnist.search.workers import waiting

    storage = search_study.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.enqueue_trial({}, user_attrs={"seed": 3, "rescore_of": 0})
    trial = study.ask()  # the queued pair, taken by a host that then stops beating
    storage.record_heartbeat(trial._trial_id)
    assert not waiting(study)
    time.sleep(5)  # past the grace of 3 heartbeats (the database keeps whole seconds)
    search_study.fail_stale(study)
    failed, again = study.get_trials()
    assert (failed.state.name, again.state.name) == ("FAIL", "WAITING") and again.user_attrs["seed"] == 3
    assert waiting(study)


TAKE_QUEUED = """
import sys, optuna
from tinymnist.search.study import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="q", storage=open_storage(sys.argv[1]))
taken = []
while (trial := study.ask()).number < int(sys.argv[2]):
    taken.append(trial.number)
print(" ".join(map(str, taken)))
"""


@pytest.mark.integration
def test_workers_on_one_sqlite_file_never_take_the_same_queued_trial(tmp_path: Path) -> None:
    """Three processes take 40 queued trials (as workers take a design or re-scoring trials): each trial once.
    Without BEGIN IMMEDIATE, sqlite3 reads a waiting trial outside any transaction, and 40 were taken 46-51
    times."""
    url, queued = f"sqlite:///{tmp_path / 'q.db'}", 40
    study = optuna.create_study(storage=search_study.open_storage(url), study_name="q")
    for i in range(queued):
        study.enqueue_trial({"x": i})
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", TAKE_QUEUED, url, str(queued)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    taken = [int(n) for p in procs for n in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken) == list(range(queued))


def test_builtin_2_counts_every_model_of_builtin_and_more() -> None:
    """builtin-2 holds every model of builtin (one width for the later layers, no second pool) and more; its
    count within a budget grows with the budget."""
    small, large = search_space.builtin_2_architectures(2500), search_space.builtin_2_architectures(4000)
    assert search_space.builtin_architectures(2500) < small < large


@pytest.mark.integration
def test_the_prepared_gpu_study_runs_on_a_cpu_with_a_tiny_budget(mnist_dir: Path, tmp_path: Path) -> None:
    import shutil

    if shutil.which("timeout") is None:
        pytest.skip("coreutils' timeout is not installed")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(mnist_dir), "TRIALS": "1", "WORKERS": "1",
           "BUDGET_S": "240", "EXTRA": "--subset 300 --validation 300"}
    subprocess.run(["bash", "bench/gpu_study.sh"], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    export = json.loads((tmp_path / "out" / "band-4k-6k-gpu.json").read_text())
    assert [t["state"] for t in export["trials"]] == ["complete"]
    assert 4000 < export["trials"][0]["n_params"] <= 6000 and (tmp_path / "out" / "band-4k-6k-gpu.db").is_file()


# --- a study from elsewhere never chooses the code that runs ---------------------------------------------------

PAYLOAD = '''
from pathlib import Path

Path("MARKER").write_text("the payload ran")


def space(trial):
    raise SystemExit("never reached")
'''


def payload_export(where: Path) -> Path:
    """A downloaded study export whose trial's model is built by ``payload.py``, which writes MARKER on import."""
    import dataclasses

    from tinymnist.training.recipes import Recipe

    (where / "payload.py").write_text(PAYLOAD)
    recipe = dataclasses.asdict(Recipe(model="payload.py:space:width=4", epochs=1))
    config = search_space.SearchConfig(max_params=1000, space="payload.py:space").to_attrs()
    trial = {"number": 0, "state": "complete", "value": 99.0, "params": {"width": 4}, "model": recipe["model"],
             "n_params": 100, "recipe": recipe, "val_acc": [99.0], "over_budget": False, "seed": 1}
    path = where / "downloaded.json"
    path.write_text(json.dumps({"study": "downloaded", "config": config, "trials": [trial]}))
    return path


def test_search_confirm_never_runs_a_space_file_the_export_names(tmp_path: Path) -> None:
    export = payload_export(tmp_path)
    result = tinymnist("search-confirm", str(export), "--trial", "0", "--seeds", "1", "--data-dir", str(tmp_path),
                       cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--space payload.py:space" in lines[0] and "--trust-remote-code" in lines[0]
    assert not (tmp_path / "MARKER").exists()
    other = tinymnist("search-confirm", str(export), "--trial", "0", "--seeds", "1", "--space", "spaces.py:space",
                      "--data-dir", str(tmp_path), cwd=tmp_path)  # naming another file is not consent to this one
    assert other.returncode == 2 and not (tmp_path / "MARKER").exists()


def test_search_rescore_never_runs_a_space_file_the_storage_names(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymnist.errors import UsageError
    from tinymnist.search.workers import rescore

    payload_export(tmp_path)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'downloaded.db'}"
    study = optuna.create_study(storage=search_study.open_storage(url), study_name="d", direction="maximize")
    for key, value in search_space.SearchConfig(max_params=1000, space="payload.py:space").to_attrs().items():
        study.set_user_attr(key, value)
    with pytest.raises(UsageError, match="--space payload.py:space"):
        rescore(url, "d", 1, [2], data_dir=str(tmp_path))
    assert not (tmp_path / "MARKER").exists()


def test_a_space_file_runs_when_the_user_names_it_or_trusts_it(tmp_path: Path) -> None:
    from tinymnist.errors import UsageError

    check = search_space.check_named
    check("tiny:w=8.16", None, False, "s")  # a built-in model runs no file
    check(f"{tmp_path}/payload.py:space:width=4", f"{tmp_path}/x/../payload.py:space", False, "s")  # the same file
    check("payload.py:space:width=4", None, True, "s")
    for named in (None, "payload.py:other", "elsewhere/payload.py:space"):
        with pytest.raises(UsageError, match="code named by the study"):
            check("payload.py:space:width=4", named, False, "s")


def test_a_confirmation_command_names_the_space_file_it_needs() -> None:
    from tinymnist.search.analysis import space_flag

    assert space_flag("examples/spaces.py:band_4k_6k:w1=8,lr=0.2") == " --space examples/spaces.py:band_4k_6k"
    assert space_flag("examples/spaces.py:compact_step4:") == " --space examples/spaces.py:compact_step4"
    assert space_flag("tiny:w=8.16,pool=2") == "" and space_flag(None) == ""
