"""Settings written once for every room that shows or records them: the recipe settings a training command may
override (the command line's flags, the results tables' flags, a lever of the search's confirmations), and the
names the search's command line shows. Plain data, so the command line reads it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Override:
    """A recipe setting a training command may change: the Recipe field, what it takes, what it does."""

    field: str
    takes: str  # "count": a whole number >= 1; "positive": a number > 0; "number": any number; "run": a run directory
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


# In the order a run's header records them. A run's seed is recorded among its overrides too (SEED), but it
# names the run within its group of seeds rather than changing the recipe.
OVERRIDES = (
    Override("epochs", "count", "override the recipe's epochs"),
    Override("lr", "positive", "override the recipe's (peak) learning rate"),
    Override("batch_size", "count", "override the recipe's batch size"),
    Override("ema", "number", "keep an exponential moving average of the weights with this decay per batch (e.g. "
                              "0.999; 0: none), scored and saved in place of the trained weights", "DECAY"),
    Override("elastic", "number", "add an elastic distortion of strength ALPHA pixels to the augmentation (e.g. 16; "
                                  "0: none)", "ALPHA"),
    Override("teacher", "run", "distill from this finished run's model (reported apart: extra training the "
                               "exercise does not count)", "RUN"),
    Override("distill", "number", "with --teacher: the teacher's share of the loss (default 0.5)", "SHARE"),
)
SEED = "seed"

# The search's built-in spaces (the first is the default; a study keeps the space it was created with) and the
# trials of a new study's initial design (the built-in space).
SPACES = ("builtin-2", "builtin")
DESIGN = 16
