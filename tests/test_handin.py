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
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "no finished run for 4 step(s)" in err


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
    assert "recipe: 1 epochs, batch 64, SGD lr 0.2" in intro and "the first 500 training images" in intro
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
