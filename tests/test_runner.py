"""Running things: one run (new, resumed, reused), seeds in order, the record's data cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CPU, start_run
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
    with pytest.raises(UsageError, match="holds a different recipe"):
        run_seeds(RunSpec(recipe=TINY.with_overrides(lr=0.05), options=CPU, step="compact_step2"),
                  [5, 3], tmp_path, small_mnist, last_k=2)
    assert not run_dir(tmp_path, "compact_step2", 5).exists()
