"""A student's own four-step journey becomes a report folder they can hand in: per step the layer table with
receptive field, the per-epoch log, the model's code, and an analysis that compares it with the step before."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tinymnist.cli.main import main

NETS = '''import torch
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Skeleton(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(1, 8), block(8, 16), nn.MaxPool2d(2), block(16, 16))
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        return self.head(self.body(x)).mean((2, 3))


class Wider(Skeleton):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(1, 8), block(8, 24), nn.MaxPool2d(2), block(24, 16))
'''

JOURNEY = '''[recipe]
epochs = 2
seed = 1

[[step]]
name = "skeleton"
model = "nets.py:Skeleton"
target = "A skeleton that trains."
lr = 0.00001

[[step]]
name = "lr"
model = "nets.py:Skeleton"
target = "A learning rate that learns."
lr = 0.05

[[step]]
name = "wider"
model = "nets.py:Wider"
target = "More channels in the second layer."
lr = 0.05

[[step]]
name = "onecycle"
model = "nets.py:Wider"
target = "A one-cycle schedule."
lr = 0.1
schedule = "onecycle"
'''


@pytest.mark.integration
def test_a_students_journey_gives_a_report_to_hand_in(mnist_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "exercise"
    work.mkdir()
    (work / "nets.py").write_text(NETS)
    (work / "journey.toml").write_text(JOURNEY)
    monkeypatch.chdir(tmp_path)
    code = main(["report", "exercise/journey.toml", "--subset", "3000", "--out", "exercise/report",
                 "--runs", "runs", "--data-dir", str(mnist_dir)])
    assert code == 0, capsys.readouterr().err
    report = (work / "report" / "report.md").read_text()
    steps = report.split("\n## Step ")[1:]
    assert len(steps) == 4
    for i, section in enumerate(steps):
        assert "```text" in section and " RF " in section and "receptive field" in section  # the layer table
        assert "<details>" in section and "| 2 |" in section  # the per-epoch log, both epochs
        assert "```python" in section and "class " in section  # the model's code
        assert "not judged (2 epochs, fewer than the last 5)" in report
        if i:
            assert f"Against step `{['skeleton', 'lr', 'wider'][i - 1]}`" in section
    assert "model `nets.py:Skeleton`" in report and str(tmp_path) not in report  # paths relative to the journey
    assert "changed lr: 1e-05 -> 0.05" in steps[1] and "model: nets.py:Skeleton -> nets.py:Wider" in steps[2]
    analyses = [re.search(r"\*\*Analysis\*\*.*?(?=\n!\[|\Z)", s, re.S).group(0) for s in steps]
    assert len(set(analyses)) == 4  # two steps with different numbers never read the same
    for name in ("test-accuracy.png", "skeleton-curves.png", "onecycle-confusion.png"):
        assert (work / "report" / "figures" / name).is_file()


@pytest.mark.parametrize(("journey", "code", "says"), [("compact", 0, "check passed"),
                                                       ("original", 1, "check FAILED: original_step4")])
def test_check_reads_the_committed_records(journey: str, code: int, says: str, capsys: pytest.CaptureFixture) -> None:
    root = Path(__file__).resolve().parent.parent / "evidence" / "runs"
    assert main(["check", journey, "--runs", str(root)]) == code
    out = capsys.readouterr().out
    assert says in out and len(out.splitlines()) == 5  # a line per step, then the verdict


def test_check_without_runs_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "compact", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "no finished run for 4 steps" in err


def test_init_writes_a_workflow_that_checks_the_journey(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "mine")]) == 0
    workflow = (tmp_path / "mine" / ".github" / "workflows" / "tinymnist.yml").read_text()
    assert "tinymnist check journey.toml --runs runs" in workflow and "on: [push, pull_request]" in workflow
    assert "runs/**/*.safetensors" in (tmp_path / "mine" / ".gitignore").read_text()


def test_a_training_introduces_itself(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "compact_step4", "--epochs", "1", "--subset", "500", "--data-dir", str(mnist_dir), "--no-download"]
    assert main([*args, "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.lstrip().startswith("epoch"))
    intro = "\n".join(out[:header])
    assert "model: compact_7k4: 7,432 params, receptive field 28x28 px" in intro and "MFLOPs per image" in intro
    assert "recipe: 1 epoch, batch 64, SGD lr 0.2" in intro and "the first 500 training images" in intro
    assert "accuracy in %" in intro and "seconds per epoch" in intro
    assert main([*args, "--runs", str(tmp_path / "q"), "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert "epoch" not in quiet.split("\n", 2)[0] and "model:" not in quiet and "targets NOT met" in quiet


@pytest.mark.integration
def test_the_flagship_in_plain_pytorch_runs_alone(mnist_dir: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "examples" / "compact_step4.py"
    import ast

    tree = ast.parse(script.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith("tinymnist") for m in modules)
    out = subprocess.run([sys.executable, str(script), "--data", str(mnist_dir), "--epochs", "1", "--subset", "2000"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "compact_7k4: 7,432 parameters" in out and "epoch  1: test accuracy" in out
    assert "does not hold 99.40% in each of the last 5" in out  # one epoch cannot hold five


PLAIN = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(x)
'''


def four_steps(models: list[str], extra: str = "") -> str:
    return extra + "".join(f'\n[[step]]\nname = "s{i}"\nmodel = "{m}"\ntarget = "t{i}"\nepochs = 1\n'
                           for i, m in enumerate(models, 1))


@pytest.mark.parametrize(("broken", "says"), [
    ("def oops(:\n", "step 4 (s4): "),
    ("import torch\n\n\ndef Net():\n    return torch.nn.Conv2d(1, 10, 28)\n", "(2, 10, 1, 1)"),
    ("import torch\n\n\ndef Net():\n    return torch.nn.Linear(10, 10)\n", "late.py")])
def test_the_whole_journey_is_checked_before_anything_trains(broken: str, says: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A syntax error in step 4's file appeared after steps 1-3 had trained."""
    monkeypatch.chdir(tmp_path)
    Path("plain.py").write_text(PLAIN)
    Path("late.py").write_text(broken)
    Path("j.toml").write_text(four_steps(["plain.py:Net"] * 3 + ["late.py:Net"]))
    code = main(["report", "j.toml", "--data-dir", str(tmp_path / "no-data"), "--no-download"])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("tinymnist: error: step 4 (s4): ") and says in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out and not Path("runs").exists()


@pytest.mark.integration
def test_a_quick_pass_is_marked_and_the_authors_analysis_is_the_analysis(mnist_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "my-exercise"
    work.mkdir()
    monkeypatch.chdir(work)
    Path("plain.py").write_text(PLAIN)
    journey = four_steps(["plain.py:Net"] * 4).replace('target = "t1"', 'target = "fewer | more"')
    journey = journey.replace('name = "s2"', 'name = "s2"\nanalysis = """Mine: the line is flat.\nTruly."""')
    Path("journey.toml").write_text(journey)
    Path("taken").write_text("a file where the report's folder would go")
    args = ["report", "journey.toml", "--epochs", "1", "--subset", "500", "--data-dir", str(mnist_dir),
            "--no-channels-last"]  # x.view after a convolution: channels_last is another issue's fix
    assert main([*args, "--out", "taken/report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinymnist: error: cannot write the report into taken/report (") and "--out" in err
    assert len(err.strip().splitlines()) == 1 and not Path("runs").exists()  # said before anything trains
    assert main(args) == 0
    report = Path("report/report.md").read_text()
    assert report.startswith("# my-exercise: 4 steps") and "Journey `journey`" not in report
    assert "**A quick pass**: every step trained 1 epoch instead of its recipe's own" in report
    assert "| 1. `s1` | fewer \\| more |" in report
    s2 = report.split("## Step 2")[1].split("## Step 3")[0]
    assert "**Analysis** (the author's).\n\nMine: the line is flat.\nTruly.\n\n**Measured**" in s2
    assert "Against step `s1`" in s2 and "Notes:" not in s2
    assert "- Data: 500 of 60,000 training images" in s2
    Path("journey.toml").write_text('title = "Tiny | CNN"\n' + journey)
    assert main(args) == 0
    assert Path("report/report.md").read_text().startswith("# Tiny | CNN: 4 steps")


def test_one_step_of_a_journey_trains_alone_with_its_own_recipe(mnist_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """`train models.py:Step1 --epochs 2` used compact_step4's recipe (peak LR 0.2), sat at chance, and said
    nothing; a journey's step could not be trained alone."""
    monkeypatch.chdir(tmp_path)
    Path("plain.py").write_text(PLAIN)
    Path("j.toml").write_text(four_steps(["plain.py:Net"] * 4).replace('target = "t2"', 'target = "t2"\nlr = 1e-6'))
    assert main(["train", "j.toml:s3x", "--data-dir", str(mnist_dir)]) == 2
    assert "j.toml has no step named 's3x'; did you mean 's3'?" in capsys.readouterr().err
    code = main(["train", "j.toml:s2", "--subset", "300", "--data-dir", str(mnist_dir), "--no-channels-last"])
    out = capsys.readouterr().out
    assert code == 0 and "recipe: 1 epoch, batch 64, SGD lr 1e-06, momentum 0.9" in out
    assert Path("runs/user/j/s2/seed-121/summary.json").is_file()
    assert "Did not learn: final test accuracy" in out and "near chance (10%)" in out
