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

from tinymnist import search_space, search_study  # noqa: E402 - after the skip

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


def check_complete(data: dict, trained: int) -> None:
    """Every trial number once, none left running or waiting, at least ``trained`` trained trials."""
    numbers = [t["number"] for t in data["trials"]]
    assert numbers == list(range(len(numbers)))
    states = [t["state"] for t in data["trials"]]
    assert "running" not in states and "waiting" not in states
    done = [t for t in data["trials"] if t["state"] in ("complete", "pruned") and not t["over_budget"]]
    assert len(done) >= trained
    for t in done:
        assert t["n_params"] <= data["config"]["max_params"]
        assert len(t["val_acc"]) >= 1 and t["model"].startswith("tiny:")


# --- the family and the space -----------------------------------------------------------------------------------

def test_builtin_space_samples_valid_recipes() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    config = search_space.SearchConfig(max_params=10_000, epochs=(6, 8, 10))
    for _ in range(50):
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
    check_complete(data, 6)
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
                        "--subset", "700", "--runs", "runs", "--data-dir", str(data_dir), cwd=tmp_path)
    assert confirm.returncode == 0, confirm.stderr
    run = tmp_path / "runs" / "search" / "u" / f"trial-{trial['number']}" / "seed-1001"
    assert json.loads((run / "recipe.json").read_text())["recipe"]["model"] == trial["model"]
    evaluated = tinymnist("eval", str(run), "--data-dir", str(data_dir), cwd=tmp_path)
    assert evaluated.returncode == 0 and "matches the recorded" in evaluated.stdout, evaluated.stderr


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
    assert data.test_labels.tolist() == labels[-500:].tolist()
    assert data.train_labels.tolist() == labels[:1000].tolist()
