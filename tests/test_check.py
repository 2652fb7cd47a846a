"""`tinymnist check` reads the evidence: the verdict from metrics.jsonl and the recipe, summary.json compared with
it, each step's journey entry compared with its run; with Python's standard library alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinymnist.cli import entry as main
from tinymnist.data import MNIST
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.runs.runner import create_run
from tinymnist.steps.builtin import get_journey
from tinymnist.targets import first_epoch_holding, judge
from tinymnist.training.recipes import RunSpec

NETS = '''import torch.nn.functional as F
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.ReLU())


class Small(nn.Module):
    def __init__(self):
        super(Small, self).__init__()
        self.body = nn.Sequential(block(1, 8), nn.MaxPool2d(2), block(8, 10))

    def forward(self, x):
        return F.log_softmax(self.body(x).mean((2, 3)), dim=1)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 10))

    def forward(self, x):
        return self.body(x).mean((2, 3))
'''

JOURNEY = '''title = "My journey"

[recipe]
epochs = 6
seed = 3

[[step]]
name = "small"
model = "nets.py:Small"
target = "A start | under 8,000"

[[step]]
name = "lr"
model = "nets.py:Small"
target = "A higher learning rate."
lr = 0.05

[[step]]
name = "wide"
model = "nets.py:Wide"
target = "Wider."
lr = 0.05

[[step]]
name = "cycle"
model = "nets.py:Wide"
target = "One cycle."
lr = 0.1
schedule = "onecycle"
'''

ACCS = [97.0, 98.5, 99.0, 99.45, 99.5, 99.48, 99.52, 99.47, 99.5]  # the last 6: every target met


def history(accs: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 0.1, "test_loss": 0.1, "train_acc": a + 0.2, "test_acc": a, "lr": 0.01,
             "train_seconds": 1.0, "seconds": 1.0} for i, a in enumerate(accs)]


def fake_finished(run: RunRecord, accs: list[float], params: int = 3_000, last_k: int = 5) -> None:
    """Finish ``run`` as a training would, with a made-up history: metrics.jsonl, then summary.json."""
    for row in history(accs):
        run.append_metrics(row)
    run.finish(params=params, history=history(accs), verdict=judge(params, accs, last_k).to_dict(),
               first_epoch_holding=first_epoch_holding(accs), last_k=last_k, device="cpu", precision="fp32",
               compiled=False, wall_seconds=1.0)


def whole(data: MNIST) -> MNIST:
    """``data`` as a whole training set (its runs record no subset)."""
    return MNIST(train_images=data.train_images, train_labels=data.train_labels, held_out_images=data.held_out_images,
                 held_out_labels=data.held_out_labels, source=data.source)


def journey_with_runs(where: Path, data: MNIST, last_k: int = 5) -> Path:
    """A student's folder: nets.py, journey.toml, and a finished run record for each of its four steps."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "nets.py").write_text(NETS)
    journey = where / "journey.toml"
    journey.write_text(JOURNEY)
    for step in get_journey(str(journey)):
        run = RunRecord(run_dir(where / "runs", step.name, step.recipe.seed))
        create_run(run, RunSpec(recipe=step.recipe, step=step.name, journey_file=str(journey)), data)
        fake_finished(run, ACCS[-step.recipe.epochs:], last_k=last_k)
    return journey


def check(journey: Path, capsys: pytest.CaptureFixture, *more: str) -> tuple[int, str, str]:
    code = main(["check", str(journey), "--runs", str(journey.parent / "runs"), *more])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_journeys_own_records_pass(small_mnist: MNIST, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = check(journey_with_runs(tmp_path / "me", whole(small_mnist)), capsys)
    assert code == 0 and err == "" and out.splitlines()[-1] == "check passed", out
    assert "4. cycle: 3,000 params, 6 epochs on every training image, last-5 minimum 99.47%: every target met" in out


def test_an_edited_summary_fails_the_check_naming_the_step(small_mnist: MNIST, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Edited by hand to claim 99.9%, a journey passed (exit 0) while metrics.jsonl said otherwise."""
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    summary = tmp_path / "me" / "runs" / "user" / "journey" / "lr" / "seed-3" / "summary.json"
    claimed = {**json.loads(summary.read_text()), "last_test_acc": 99.9}
    summary.write_text(json.dumps(claimed))
    code, out, _ = check(journey, capsys)
    assert code == 1 and "last_test_acc 99.9 (its log gives 99.5)" in out
    assert out.splitlines()[-1] == "check FAILED: lr (summary.json disagrees with its log)"


def test_a_log_that_misses_the_target_fails_whatever_its_summary_says(small_mnist: MNIST, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    run = tmp_path / "me" / "runs" / "user" / "journey" / "cycle" / "seed-3"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-2]["test_acc"] = 98.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = check(journey, capsys)
    assert code == 1 and "last-5 minimum 98.00%: targets missed" in out
    assert "cycle misses a target" in out.splitlines()[-1] and "min_test_acc_last_5 99.47 (its log gives 98.0)" in out


def test_a_run_judged_with_another_last_k_is_checked_from_its_log(small_mnist: MNIST, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A run judged with --last-k 3 crashed check with KeyError: 'min_test_acc_last_5'."""
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist), last_k=3)
    code, out, err = check(journey, capsys)
    assert code == 0 and err == "" and "last-5 minimum 99.47%" in out


def test_a_changed_model_or_setting_names_only_its_own_steps(small_mnist: MNIST, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    nets = journey.parent / "nets.py"
    nets.write_text(nets.read_text().replace("block(16, 10)", "block(16, 12), nn.Conv2d(12, 10, 1)")
                    + "\n# a comment changes no model\n")
    journey.write_text(journey.read_text().replace('lr = 0.05\n\n[[step]]\nname = "wide"', 'lr = 0.02\n\n[[step]]\n'
                                                                                          'name = "wide"'))
    code, out, _ = check(journey, capsys)
    lines = out.splitlines()
    again = f"tinymnist report {journey} --runs {journey.parent / 'runs'}"  # advice to paste as it stands
    assert code == 1 and lines[-1] == (f"check FAILED: lr (its run is not the journey's: retrain it with {again}); "
                                       f"wide (its run is not the journey's: retrain it with {again}); cycle (its "
                                       f"run is not the journey's: retrain it with {again})")
    assert "the journey's entry no longer matches this run: recipe changed: lr" in out
    assert out.count("model code changed (Wide in nets.py)") == 2 and "Small in nets.py" not in out


def test_a_subset_run_is_named(small_mnist: MNIST, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = check(journey_with_runs(tmp_path / "me", small_mnist), capsys)
    assert code == 1 and "6 epochs on the first 2,000 training images (a subset)" in out
    assert "trained on the first 2,000 training images (a subset), not on every training image" in out


@pytest.mark.parametrize(("file", "text", "says"), [
    ("summary.json", "{not json", "summary.json is not valid JSON; the run record is damaged."),
    ("metrics.jsonl", '{"epoch": 1}\n{"test_acc": 99.5, "train_acc": 99.0}\n', "metrics.jsonl line 1 is not an "
                                                                                "epoch's metrics"),
    ("recipe.json", "[1, 2]", "recipe.json does not hold a JSON object")])
def test_a_damaged_record_is_one_sentence_and_exit_2(file: str, text: str, says: str, small_mnist: MNIST,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    (tmp_path / "me" / "runs" / "user" / "journey" / "wide" / "seed-3" / file).write_text(text)
    code, out, err = check(journey, capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_record_file_that_is_a_symlink_is_not_followed(small_mnist: MNIST, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    summary = tmp_path / "me" / "runs" / "user" / "journey" / "small" / "seed-3" / "summary.json"
    (tmp_path / "elsewhere.json").write_text(summary.read_text())
    summary.unlink()
    summary.symlink_to(tmp_path / "elsewhere.json")
    code, _, err = check(journey, capsys)
    assert code == 2 and "summary.json cannot be opened as a regular file" in err


def test_the_check_imports_nothing_outside_the_standard_library(small_mnist: MNIST, tmp_path: Path) -> None:
    """A student's CI runs the check with no torch, numpy or tqdm: the whole code path, from the entry point,
    imports the standard library and tinymnist alone (with -S: no site-packages at all)."""
    journey = journey_with_runs(tmp_path / "me", whole(small_mnist))
    code = ("import sys\nfrom tinymnist.cli import entry\nrc = entry(['check', sys.argv[1], '--runs', sys.argv[2]])\n"
            "top = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(top - set(sys.stdlib_module_names) - {'tinymnist', '__main__'}))\nsys.exit(rc)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(journey), str(journey.parent / "runs")],
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": src, "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["check passed", "[]"]


def test_the_check_names_runs_as_the_records_do() -> None:
    """What the check repeats because it cannot import torch-loading modules: the run's path, the default seed."""
    from tinymnist.cli.journey import DEFAULT_SEED
    from tinymnist.reports.check import run_path
    from tinymnist.training.recipes import Recipe

    assert run_path("r", "user/j/s", 3) == run_dir("r", "user/j/s", 3) and Recipe(model="m").seed == DEFAULT_SEED


@pytest.mark.integration
def test_the_workflow_init_writes_passes_in_a_clean_environment(small_mnist: MNIST, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """The CI check `init` writes, command by command, in a fresh venv with no third-party package: it installs
    the checker `init` committed (pip install --no-deps, offline) and checks the journey's records."""
    import re
    import venv

    student = tmp_path / "mine"
    assert main(["init", str(student)]) == 0
    capsys.readouterr()
    for step in get_journey(str(student / "journey.toml")):
        run = RunRecord(run_dir(student / "runs", step.name, step.recipe.seed))
        create_run(run, RunSpec(recipe=step.recipe, step=step.name, journey_file=str(student / "journey.toml")),
                   whole(small_mnist))
        fake_finished(run, ACCS + [99.5] * (step.recipe.epochs - len(ACCS)), params=8_066)
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True, clear=True)
    workflow = (student / ".github" / "workflows" / "tinymnist.yml").read_text()
    commands = re.findall(r"^\s+run: (.+)$", workflow, re.M)
    assert len(commands) == 2 and "torch" not in workflow.split("steps:")[1]
    bin_dir = env_dir / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "VIRTUAL_ENV": str(env_dir)}
    listed = subprocess.run([bin_dir / "python", "-m", "pip", "list", "--format", "freeze"], capture_output=True,
                            text=True, env=env, check=True).stdout
    assert {line.split("==")[0] for line in listed.split()} <= {"pip", "setuptools"}  # no third-party package
    outs = [subprocess.run(["bash", "-c", command], cwd=student, capture_output=True, text=True, env=env,
                           timeout=300) for command in commands]
    assert [o.returncode for o in outs] == [0, 0], [o.stderr for o in outs]
    assert "4. step4: 8,066 params, 15 epochs on every training image" in outs[1].stdout
    assert outs[1].stdout.splitlines()[-1] == "check passed"
    gone = subprocess.run([bin_dir / "python", "-c", "import torch"], capture_output=True, env=env)
    assert gone.returncode != 0  # the check passed without torch
