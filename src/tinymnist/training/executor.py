"""Running a training: the one loop. A RunSpec says what to train, on which images and how; ``execute`` builds
the Trainer, trains it epoch by epoch and hands every event to its sinks: a run record (runner.RecordSink), an
Optuna trial (search.TrialSink), a notebook's result (api), a benchmark's timer. A sink never changes what is
trained: the same spec on the same images gives the same epochs whichever sinks watch it (tested).

Prints nothing; a sink may stop the run by raising (a pruned trial, Ctrl-C), and the sinks before it have then
seen every completed epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tinymnist.data import MNIST
from tinymnist.errors import CheckpointError, UsageError
from tinymnist.training.engine import Teacher, Trainer
from tinymnist.training.recipes import RunSpec


class Sink:
    """Where a training's events go; every method may be left as it is (nothing)."""

    def start(self, trainer: Trainer) -> None:
        """Before the first epoch is trained, once the executor has restored a resumed run (its epochs are in
        ``trainer.history``): a sink observes; a search trial may refuse the model (too many parameters) by
        raising, and nothing else changes what is trained."""

    def batch(self, done: int, total: int) -> None:
        """After each batch of the epoch being trained."""

    def epoch(self, trainer: Trainer, metrics: dict) -> None:
        """After each epoch, with its metrics (already in ``trainer.history``)."""

    def finish(self, trainer: Trainer) -> None:
        """After the last epoch."""


class Callbacks(Sink):
    """Plain functions as a sink: ``on_epoch(metrics)`` for every epoch, the ones a resumed run had already
    trained included (shown first), and ``on_batch(done, total)``."""

    def __init__(self, on_epoch: Callable[[dict], None] | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.on_epoch, self.on_batch = on_epoch, on_batch

    def start(self, trainer: Trainer) -> None:
        for metrics in trainer.history:
            self.epoch(trainer, metrics)

    def batch(self, done: int, total: int) -> None:
        if self.on_batch:
            self.on_batch(done, total)

    def epoch(self, trainer: Trainer, metrics: dict) -> None:
        if self.on_epoch:
            self.on_epoch(metrics)


def cut(spec: RunSpec, data: MNIST) -> MNIST:
    """``data`` cut to the images ``spec`` trains and scores on; refused when they are not what it says."""
    if data.held_out != spec.held_out:
        raise UsageError(f"this run is scored on {spec.held_out} images, but the data given holds "
                         f"{data.held_out} images in their place; load the data the run names.")
    want = (spec.train_images or len(data.train_labels), spec.held_out_images or len(data.held_out_labels))
    if want == (len(data.train_labels), len(data.held_out_labels)):
        return data
    if want[0] > len(data.train_labels) or want[1] > len(data.held_out_labels):
        raise UsageError(f"this run trains on {want[0]:,} training images and is scored on {want[1]:,} "
                         f"{spec.held_out} images, more than the data given has; point --data-dir at the full MNIST.")
    return data.subset(*want)


def execute(spec: RunSpec, data: MNIST, sinks: Sequence[Sink] = (), *,
            build: Callable[[], nn.Module] | None = None,
            resume: tuple[dict[str, torch.Tensor], list[dict]] | None = None,
            teacher: Teacher | None = None) -> Trainer:
    """Train ``spec`` on ``data`` (cut to the spec's images) to its last epoch; returns the Trainer.
    ``build``: a function building the model instead of the recipe's name (a notebook's own class);
    ``resume``: a checkpoint's (tensors, history), restored here before any sink starts, so that sinks only
    observe and their order does not matter; ``teacher``: the model a distilling recipe learns from."""
    data = cut(spec, data)
    trainer = Trainer(spec, data, teacher=teacher, build=build)
    if resume and resume[1]:
        try:
            trainer.load_state(*resume)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint does not fit model {spec.recipe.model!r} ({e}).") from None
    for sink in sinks:
        sink.start(trainer)

    def on_batch(done: int, total: int) -> None:
        for sink in sinks:
            sink.batch(done, total)

    while trainer.epoch < spec.recipe.epochs:
        metrics = trainer.run_epoch(on_batch)
        for sink in sinks:
            sink.epoch(trainer, metrics)
    for sink in sinks:
        sink.finish(trainer)
    return trainer
