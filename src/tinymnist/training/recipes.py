"""Recipes (how one model is trained), Options (how a run is executed) and Steps (a recipe with its target
text, notes and the seeds it was tuned on): all data. The learning-rate schedule is training/schedule.py; the
built-in steps and journeys are steps/builtin.py; a user's journey file is steps/journey_file.py."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tinymnist.errors import Note, UsageError, counted, unknown_name

SCHEDULES = ("constant", "step", "onecycle")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    model: str
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01  # peak learning rate, per batch of `batch_size`
    momentum: float = 0.9  # SGD momentum (Adam: beta1)
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"  # constant | step (per epoch) | onecycle (per batch)
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: factor at each decay
    warmup: float = 0.2  # onecycle: fraction of all batches spent rising linearly to `lr`
    final_lr: float = 0.0  # onecycle: where the linear decay ends, as a fraction of `lr`
    cycle_epochs: int | None = None  # onecycle: epochs the cycle spans (default: all); the LR then stays at its end
    rotate: float = 0.0  # augmentation: rotation, ±degrees
    shift: float = 0.0  # augmentation: translation, ± fraction of the side
    scale: float = 0.0  # augmentation: zoom, 1 ± fraction
    elastic: float = 0.0  # augmentation: elastic distortion's strength alpha, pixels (Simard et al. 2003; 0: none)
    # Distillation: a finished run whose model teaches (its directory; None: none), and the teacher's share of
    # the loss (the rest is the labels' NLL); the teacher's probabilities are softened at DISTILL_TEMPERATURE.
    teacher: str | None = None
    distill: float = 0.5
    label_smoothing: float = 0.0
    # Weight averaging: the decay of an exponential moving average of the weights and BatchNorm statistics,
    # updated after every batch (0: off). The average is what each epoch is scored with and what a run saves.
    ema: float = 0.0
    seed: int = 121

    @property
    def augmented(self) -> bool:
        """Whether training draws a random distortion of every image (rotation, shift, zoom or elastic)."""
        return bool(self.rotate or self.shift or self.scale or self.elastic)

    def with_overrides(self, **overrides: object) -> Recipe:
        """A copy with the non-None ``overrides`` applied and checked."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}.")
        epochs = changes.get("epochs")
        if epochs and self.cycle_epochs and "cycle_epochs" not in changes and self.cycle_epochs > epochs:
            # a quick look at fewer epochs than the LR cycle: the cycle keeps its share of the run
            changes["cycle_epochs"] = max(1, round(self.cycle_epochs * epochs / self.epochs))
            warnings.warn(Note(f"this recipe's LR cycle spans {self.cycle_epochs} of its {self.epochs} epochs; "
                               f"with {counted(epochs, 'epoch')} it spans {changes['cycle_epochs']} "
                               f"(scaled to the same share)."), stacklevel=2)
        recipe = dataclasses.replace(self, **changes)
        recipe.check()
        return recipe

    def check(self, train_size: int | None = None, model: bool = True) -> None:
        """Raise UsageError, naming the setting, for any value training cannot use (``model=False``: the model
        is built by other means than its name)."""
        if model:
            from tinymnist.models import model_name  # the zoo loads torch: only when a model is checked

            model_name(self.model)  # an unknown model name fails here, naming the closest one
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1 (got {self.epochs}).")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1 (got {self.batch_size}).")
        if train_size is not None and self.batch_size > train_size:
            raise UsageError(f"batch size {self.batch_size} is larger than the training set ({train_size} images).")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be greater than 0 (got {self.lr}).")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, list(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, list(SCHEDULES))
        if not 0 <= self.warmup < 1:
            raise UsageError(f"warmup must be a fraction in [0, 1) (got {self.warmup}).")
        if self.cycle_epochs is not None and not 1 <= self.cycle_epochs <= self.epochs:
            raise UsageError(f"this recipe's LR cycle spans {counted(self.cycle_epochs, 'epoch')}, more than the "
                             f"{self.epochs} asked for; use --epochs {self.cycle_epochs} or more.")
        if not 0 < self.distill <= 1:
            raise UsageError(f"distill must be the teacher's share of the loss, in (0, 1] (got {self.distill}).")
        if self.elastic < 0:
            raise UsageError(f"elastic must be a strength in pixels >= 0, such as 16, or 0 for none (got "
                             f"{self.elastic}).")
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema must be a decay in [0, 1), such as 0.999, or 0 for none (got {self.ema}).")
        if self.step_size < 1:
            raise UsageError(f"step size must be at least 1 epoch (got {self.step_size}).")


@dataclass(frozen=True, kw_only=True)
class Options:
    """How to run a recipe (not what to learn). ``precision``, ``threads`` and ``compile`` change the order of the
    arithmetic, so a seed's numbers come back only with all three."""

    device: str = "auto"
    channels_last: bool = True  # NHWC where a model is proven unchanged by it: faster on CPU (docs/performance.md)
    precision: str = "auto"  # auto | fp32 | bf16 (autocast: convolutions in bf16, BN, loss and weights in fp32)
    threads: int | None = None  # CPU threads; None = torch's default (one per core)
    compile: str = "auto"  # auto | on | off: the training step through torch.compile (placement.resolve_compile)


@dataclass(frozen=True)
class Step:
    name: str
    target: str  # what this step sets out to do, one or two sentences (its "Target" in a report)
    recipe: Recipe
    notes: tuple[str, ...] = field(default_factory=tuple)  # the written analysis that follows the measured one
    published: tuple[float, ...] = ()  # per-epoch test accuracy (%) its author published, when there is one
    # Seeds whose results were looked at while choosing this recipe: a pass on them proves the choice, not the
    # recipe. Confirmation seeds (targets.fresh_seeds) are never these.
    tuned_seeds: tuple[int, ...] = ()
    # The step this one changes one thing of (a lever at about the same size): docs/results.md pairs their runs
    # seed by seed.
    baseline: str = ""


HELD_OUT = ("test", "validation")  # what a run is scored on each epoch


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training, described once: what is learned (the recipe, seed included), how it is executed, on which
    images, and where it came from. The one input of ``executor.execute``, and the header of a run record."""

    recipe: Recipe
    options: Options = Options()
    step: str = ""  # the step or recipe it is a run of (its run directory's name); "" for a notebook's run
    # "test": train on the training files, score each epoch on the test files; "validation": train on the
    # training files minus their last images and score on those (anything that chooses is scored there)
    held_out: str = "test"
    train_images: int | None = None  # the first N training images only (None: all of them)
    held_out_images: int | None = None  # the first N held-out images only (None: all of them)
    # Provenance, read by whatever reports it: the seeds whose results were looked at while the recipe was
    # chosen (a pass there proves the choice, not the recipe), the settings the user changed, a search trial
    # the recipe comes from ({"study", "trial", "export"}), a user's journey file the step comes from.
    tuned_seeds: tuple[int, ...] = ()
    overrides: dict | None = None
    origin: dict | None = None
    journey_file: str | None = None
    # How a recorded run is rebuilt exactly: the (mean, std) it normalizes with, in place of the training images'
    # own (a resumed run keeps what it started with), and where a user's model file is read from (a run's kept
    # copy, when the original is gone). None: computed from the data / the file the recipe names.
    normalization: tuple[float, float] | None = None
    model_source: Path | None = None

    def __post_init__(self) -> None:
        if self.held_out not in HELD_OUT:
            raise UsageError(f"a run is scored on {' or '.join(HELD_OUT)}, not {self.held_out!r}.")

    def with_seed(self, seed: int) -> RunSpec:
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, seed=seed),
                                   overrides={**(self.overrides or {}), "seed": seed})
