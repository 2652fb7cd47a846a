"""The one executor: a RunSpec trained once, whoever watches it. The same spec on the same images gives the same
epochs through every sink: a run record, the notebook API's result, an Optuna trial and plain callbacks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import CPU, start_run
from tinymnist.errors import UsageError
from tinymnist.runs.runner import train_run
from tinymnist.training.executor import Callbacks, execute
from tinymnist.training.recipes import Recipe, RunSpec
from tinymnist.use import api

RECIPE = Recipe(model="compact_7k4", epochs=2, batch_size=32, lr=0.05, seed=3, rotate=5.0, shift=0.05)


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if "seconds" not in k} for m in history]


def test_the_same_spec_gives_the_same_epochs_through_every_sink(small_mnist, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    from tinymnist.search.space import SearchConfig
    from tinymnist.search.workers import TrialSink

    data = small_mnist.subset(500, 200)
    spec = RunSpec(recipe=RECIPE, options=CPU, step="compact_step2")

    run = start_run(tmp_path, "compact_step2", RECIPE, data)
    train_run(run, data)
    recorded = without_seconds(run.metrics())

    result = api.train("compact_7k4", RECIPE, data, CPU)

    seen: list[dict] = []
    execute(spec, data, [Callbacks(seen.append)])

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    sink = TrialSink(trial, SearchConfig(max_params=10_000, last_k=1))
    execute(spec, data, [sink])
    study.tell(trial, sink.score())

    assert len(recorded) == 2 and recorded[0]["train_loss"] != recorded[1]["train_loss"]
    assert without_seconds(result.history) == recorded
    assert without_seconds(seen) == recorded
    reported = study.trials[0].intermediate_values
    assert [reported[e] for e in (1, 2)] == [m["test_acc"] for m in recorded] == study.trials[0].user_attrs["val_acc"]


def test_a_run_is_scored_on_the_images_its_spec_names(small_mnist) -> None:
    spec = RunSpec(recipe=RECIPE, options=CPU, held_out="validation")
    with pytest.raises(UsageError, match="scored on validation images, but the data given holds test images"):
        execute(spec, small_mnist)
    with pytest.raises(UsageError, match="a run is scored on test or validation"):
        RunSpec(recipe=RECIPE, options=CPU, held_out="train")


def test_validation_scores_are_called_validation_scores(small_mnist) -> None:
    import dataclasses

    validation = dataclasses.replace(small_mnist.subset(500, 200), held_out="validation")
    history = execute(RunSpec(recipe=dataclasses.replace(RECIPE, epochs=1), options=CPU, held_out="validation"),
                      validation).history
    assert "val_acc" in history[0] and "val_loss" in history[0] and "test_acc" not in history[0]


def test_a_sink_given_first_or_last_gives_the_same_resumed_run(small_mnist, tmp_path: Path) -> None:
    """The executor restores a resumed run before any sink starts: a record sink given before or after the
    other sinks trains the same epochs."""
    import dataclasses
    import shutil

    from tinymnist.runs.records import RunRecord
    from tinymnist.runs.runner import RecordSink

    recipe = dataclasses.replace(RECIPE, epochs=3)
    first = start_run(tmp_path / "a", "order", recipe, small_mnist)
    execute(dataclasses.replace(first.spec(), recipe=dataclasses.replace(recipe, epochs=1)), small_mnist,
            [RecordSink(first)])  # one epoch checkpointed: the run to resume
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    second = RunRecord(tmp_path / "b" / first.path.relative_to(tmp_path / "a"))
    histories = []
    for run, order in ((first, "record first"), (second, "record last")):
        seen: list[dict] = []
        sinks = [RecordSink(run), Callbacks(seen.append)]
        spec = dataclasses.replace(run.spec(), normalization=run.normalization())
        execute(spec, small_mnist, sinks if order == "record first" else sinks[::-1],
                resume=run.load_checkpoint(recipe.model))
        histories.append([{k: v for k, v in m.items() if "seconds" not in k} for m in run.metrics()])
        assert [m["epoch"] for m in seen] == [1, 2, 3]  # the resumed epoch is observed too, then the new ones
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_the_spec_carries_the_normalization_and_the_model_source(small_mnist, tmp_path: Path) -> None:
    model = tmp_path / "kept.py"  # a run's kept copy of a user's file, read in place of the file the recipe names
    model.write_text("from torch import nn\n\n\ndef Net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), "
                     "nn.LogSoftmax(1))\n")
    recipe = dataclasses.replace(RECIPE, model="gone.py:Net", epochs=1)
    spec = RunSpec(recipe=recipe, options=CPU, normalization=(0.5, 0.25), model_source=model)
    trainer = execute(spec, small_mnist.subset(256, 64))
    assert (trainer.mean, trainer.std) == (0.5, 0.25)
    assert sum(p.numel() for p in trainer.model.parameters()) == 7850
