"""Running things: one run (new, resumed, reused), seeds in order, the record's data cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import start_run
from tinymnist.errors import UsageError
from tinymnist.recipes import Options, Recipe
from tinymnist.records import RunRecord, data_for, run_dir
from tinymnist.runner import run_seeds, train_run

TINY = Recipe(model="compact_7k4", epochs=2, seed=0)


def test_a_finished_run_is_returned_as_it_is(small_mnist, tmp_path: Path) -> None:  # noqa: ANN001
    run = start_run(tmp_path, "compact_step2", TINY, small_mnist)
    summary = train_run(run, small_mnist)
    before = (run / "metrics.jsonl").read_text()
    assert train_run(run, small_mnist) == summary and (run / "metrics.jsonl").read_text() == before


def test_a_run_records_its_images_and_resumes_on_them(small_mnist, tmp_path: Path) -> None:  # noqa: ANN001
    part = small_mnist.subset(500, 300)
    run = start_run(tmp_path, "compact_step2", TINY, part)
    assert run.data_sizes() == (500, 300)
    cut = data_for(run, small_mnist)  # handed more images, it trains (and evaluates) on its own 500 / 300
    assert (len(cut.train_labels), len(cut.test_labels)) == (500, 300)
    with pytest.raises(UsageError, match="more than the data given has"):
        data_for(run, part.subset(100, 100))


def test_run_seeds_in_order_judges_every_seed(small_mnist, tmp_path: Path) -> None:  # noqa: ANN001
    seen = []
    figures = run_seeds("compact_step2", TINY, [3, 4], tmp_path, small_mnist, Options(device="cpu"),
                        on_run=lambda seed, run: seen.append(seed), last_k=2)
    assert seen == [3, 4] and [s["seed"] for s in figures["seeds"]] == [3, 4]
    for seed in (3, 4):
        run = RunRecord(run_dir(tmp_path, "compact_step2", seed))
        assert run.finished() and run.recipe().seed == seed and run.header()["overrides"] == {"seed": seed}
        assert figures["seeds"][seed - 3]["final"] == run.test_accs()[-1]


def test_seeds_of_another_recipe_are_refused_before_training(small_mnist, tmp_path: Path) -> None:  # noqa: ANN001
    run_seeds("compact_step2", TINY, [3], tmp_path, small_mnist, Options(device="cpu"), last_k=2)
    with pytest.raises(UsageError, match="holds a different recipe"):
        run_seeds("compact_step2", TINY.with_overrides(lr=0.05), [5, 3], tmp_path, small_mnist, Options(device="cpu"),
                  last_k=2)
    assert not run_dir(tmp_path, "compact_step2", 5).exists()
