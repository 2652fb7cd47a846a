"""Full trainings (minutes of CPU): run with `python -m pytest -m slow`. CI runs them when MNIST is available."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import start_run
from tinymnist.models import count_params, create_model
from tinymnist.runs.runner import train_run
from tinymnist.steps.builtin import get_step
from tinymnist.training.recipes import Options


@pytest.mark.slow
def test_compact_step4_meets_every_target(real_mnist, tmp_path: Path) -> None:
    # Seed 1004 with one thread and bf16, a fresh seed recorded in docs/results.md, holds 99.54-99.56% in its
    # last five epochs on the reference machine: a margin of over ten test images for a CPU that computes
    # slightly differently. (A run is a draw: docs/results.md shows 9 of 10 fresh seeds pass, not all.)
    recipe = get_step("compact_step4").recipe.with_overrides(seed=1004)
    run = start_run(tmp_path, "compact_step4", recipe, real_mnist, Options(device="cpu", threads=1))
    summary = train_run(run, real_mnist)
    assert count_params(create_model(recipe.model)) < 8_000 and summary["epochs"] == 15
    assert summary["verdict"]["met"], summary["verdict"]
    assert summary["min_test_acc_last_5"] >= 99.40
