"""Per-epoch metrics for the ecosystem's tools: a TensorBoard event file (the optional [tensorboard] extra),
through the executor's sinks like any other observer."""

from __future__ import annotations

from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.training.engine import Trainer
from tinymnist.training.executor import Sink

FIELDS = (("loss/train", "train_loss"), ("accuracy/train", "train_acc"), ("lr", "lr"), ("seconds", "seconds"))


class TensorBoardSink(Sink):
    """Each epoch's losses, accuracies (percent), LR and seconds as TensorBoard scalars under ``directory``; a
    resumed run's earlier epochs are written at its start, so the curves are whole."""

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs the [tensorboard] extra: pip install \"tinymnist[tensorboard]\"") \
                from None
        self.writer = SummaryWriter(str(directory))
        self.logged: set[int] = set()

    def start(self, trainer: Trainer) -> None:
        for metrics in trainer.history:
            self.epoch(trainer, metrics)

    def epoch(self, trainer: Trainer, metrics: dict) -> None:
        if metrics["epoch"] in self.logged:
            return
        self.logged.add(metrics["epoch"])
        held_out = trainer.score_prefix  # "test" or "val": the split the run is scored on, by its name
        for tag, key in (*FIELDS, (f"loss/{held_out}", f"{held_out}_loss"), (f"accuracy/{held_out}",
                                                                            f"{held_out}_acc")):
            if key in metrics:
                self.writer.add_scalar(tag, metrics[key], metrics["epoch"])
        self.writer.flush()

    def finish(self, trainer: Trainer) -> None:
        self.writer.close()
