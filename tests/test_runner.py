"""Running things: one run (new, resumed, reused), seeds in order, the record's data cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CPU, start_run
from tinymnist.cli.main import main
from tinymnist.errors import UsageError
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.runs.runner import run_seeds, train_run
from tinymnist.training.executor import cut
from tinymnist.training.recipes import Recipe, RunSpec

TINY = Recipe(model="compact_7k4", epochs=2, seed=0)


def test_a_finished_run_is_returned_as_it_is(small_mnist, tmp_path: Path) -> None:
    data = small_mnist.subset(500, 200)
    run = start_run(tmp_path, "compact_step2", TINY, data)
    summary = train_run(run, data)
    before = (run / "metrics.jsonl").read_text()
    assert train_run(run, data) == summary and (run / "metrics.jsonl").read_text() == before


def test_a_run_records_its_images_and_resumes_on_them(small_mnist, tmp_path: Path) -> None:
    part = small_mnist.subset(500, 300)
    run = start_run(tmp_path, "compact_step2", TINY, part)
    assert run.data_sizes() == (500, 300)
    given = cut(run.spec(), small_mnist)  # handed more images, it trains (and evaluates) on its own 500 / 300
    assert (len(given.train_labels), len(given.held_out_labels)) == (500, 300)
    with pytest.raises(UsageError, match="more than the data given has"):
        cut(run.spec(), part.subset(100, 100))


@pytest.mark.integration
def test_run_seeds_in_order_judges_every_seed(small_mnist, tmp_path: Path) -> None:
    seen = []
    figures = run_seeds(RunSpec(recipe=TINY, options=CPU, step="compact_step2"), [3, 4], tmp_path, small_mnist,
                        on_run=lambda seed, run: seen.append(seed), last_k=2)
    assert seen == [3, 4] and [s["seed"] for s in figures["seeds"]] == [3, 4]
    for seed in (3, 4):
        run = RunRecord(run_dir(tmp_path, "compact_step2", seed))
        assert run.finished() and run.recipe().seed == seed and run.header()["overrides"] == {"seed": seed}
        assert figures["seeds"][seed - 3]["final"] == run.test_accs()[-1]


@pytest.mark.integration
def test_seeds_of_another_recipe_are_refused_before_training(small_mnist, tmp_path: Path) -> None:
    run_seeds(RunSpec(recipe=TINY, options=CPU, step="compact_step2"), [3], tmp_path, small_mnist, last_k=2)
    with pytest.raises(UsageError, match=r"holds a run that differs in its recipe \(lr 0.01 here, 0.05 asked\)"):
        run_seeds(RunSpec(recipe=TINY.with_overrides(lr=0.05), options=CPU, step="compact_step2"),
                  [5, 3], tmp_path, small_mnist, last_k=2)
    assert not run_dir(tmp_path, "compact_step2", 5).exists()


# --- no half-made run ---------------------------------------------------------------------------------------

# A student's model whose forward fails only in training (as a shape mistake does on the training batch size).
FAILING = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x):
        if self.training:
            raise ValueError("a mistake in my forward")
        return self.conv(x).flatten(1)
'''


def test_a_model_failing_in_training_is_one_sentence_and_leaves_no_run(mnist_dir: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models.py"
    models.write_text(FAILING)
    argv = ["train", f"{models}:Net", "--epochs", "1", "--subset", "500", "--device", "cpu", "--threads", "1",
            "--runs", str(tmp_path / "runs"), "--data-dir", str(mnist_dir)]
    assert main(argv) == 2
    errors = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("tinymnist: note:")]
    line = FAILING.splitlines().index('            raise ValueError("a mistake in my forward")') + 1
    assert len(errors) == 1 and f"{models}:{line}: the model's forward raised ValueError" in errors[0], errors
    assert not any((tmp_path / "runs").rglob("*")), "a failed run leaves nothing behind"
    models.write_text(FAILING.replace("if self.training:", "if False:"))
    assert main(argv) == 0


def test_a_run_stopped_before_its_first_epoch_is_started_again_by_the_same_command(
        mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C (or a kill) before the first epoch leaves a header and nothing to resume: the same command trains it,
    no rm -rf needed."""
    from tinymnist.runs import runner

    argv = ["train", "original_step3", "--epochs", "1", "--subset", "500", "--device", "cpu", "--threads", "1",
            "--runs", str(tmp_path), "--data-dir", str(mnist_dir)]
    with monkeypatch.context() as m:
        m.setattr(runner, "execute", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(argv) == 130
    assert (tmp_path / "original_step3" / "seed-121" / "recipe.json").is_file()
    assert main(argv) == 0, capsys.readouterr().err
