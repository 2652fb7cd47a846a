"""tinymnist from Python (a notebook): train a model class or factory with a recipe, get its history and verdict
back, plot its curves, check it over seeds, print the layer table of any nn.Module.

    import tinymnist as tm
    data = tm.load_mnist().subset(5000)
    result = tm.train(Net, tm.recipe("original_step4", epochs=3), data)
    result.plot()                        # a matplotlib Figure (shown inline)
    tm.show_layers(Net())                # the per-layer table
    tm.consistency(Net, tm.recipe("original_step4", epochs=3), data, seeds=[1001, 1002])

Runs made here are held in memory (no run directory); use the CLI for recorded, resumable runs.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tinymnist.data import MNIST
from tinymnist.models import count_params, create_model, prepare_model
from tinymnist.reports.render import epoch_table, layer_lines, over_seeds_lines, verdict_lines
from tinymnist.steps.builtin import DEFAULT_RECIPE, get_step
from tinymnist.targets import LAST_K, Verdict, first_epoch_holding, fresh_seeds, judge, over_seeds
from tinymnist.training.executor import Callbacks, execute
from tinymnist.training.recipes import Options, Recipe, RunSpec

ModelLike = type[nn.Module] | Callable[[], nn.Module] | str


def recipe(step: str = DEFAULT_RECIPE, **settings: object) -> Recipe:
    """The recipe of a built-in step, with ``settings`` changed (checked as on the command line)."""
    return get_step(step).recipe.with_overrides(**settings)


class Text(str):
    """Lines that a notebook shows as they are."""

    def __repr__(self) -> str:
        return str(self)


def show_layers(model: nn.Module | str) -> Text:
    """The per-layer table (output shape, parameters, receptive field, jump) of any nn.Module or model name."""
    return Text("\n".join(layer_lines(create_model(model) if isinstance(model, str) else model)))


def _builder(model: ModelLike) -> tuple[str, Callable[[], nn.Module] | None]:
    """(a name for the recipe, a function building the model: None for a registered or file model)."""
    if isinstance(model, str):
        return model, None
    name = getattr(model, "__qualname__", type(model).__name__)
    return name, lambda: prepare_model(model(), name)


@dataclass
class Plot:
    """A matplotlib Figure that a notebook shows as a PNG, whatever matplotlib backend is active."""

    figure: object  # matplotlib.figure.Figure

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def savefig(self, *args: object, **kwargs: object) -> None:
        self.figure.savefig(*args, **kwargs)


@dataclass
class Result:
    """One training: per-epoch history, the verdict against the targets, the trained model."""

    recipe: Recipe
    history: list[dict]
    params: int
    model: nn.Module
    last_k: int = LAST_K

    @property
    def verdict(self) -> Verdict:
        return judge(self.params, [m["test_acc"] for m in self.history], self.last_k)

    @property
    def test_accs(self) -> list[float]:
        return [m["test_acc"] for m in self.history]

    def plot(self, title: str | None = None) -> Plot:
        """Loss and accuracy curves: shown inline by a notebook; ``.figure`` is the matplotlib Figure."""
        from tinymnist.reports.report import curves_figure

        return Plot(curves_figure(self.history, title or f"{self.recipe.model}, seed {self.recipe.seed}"))

    def __repr__(self) -> str:
        summary = {"verdict": self.verdict.to_dict(), "first_epoch_holding": first_epoch_holding(self.test_accs)}
        return "\n".join([*epoch_table(self.history), "", *verdict_lines(summary)])


def train(model: ModelLike, recipe: Recipe | None = None, data: MNIST | None = None, options: Options | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> Result:
    """Train ``model`` (an nn.Module class or a function returning one, a registered name, or FILE.py:NAME) with
    ``recipe`` (default: the compact journey's final recipe) on ``data`` (default: the whole MNIST)."""
    from tinymnist.data import load_mnist

    name, build = _builder(model)
    spec = RunSpec(recipe=dataclasses.replace(recipe or get_step(DEFAULT_RECIPE).recipe, model=name),
                   options=options or Options())
    trainer = execute(spec, data or load_mnist(), [Callbacks(on_epoch)], build=build)
    return Result(spec.recipe, trainer.history, count_params(trainer.model), trainer.saved_model)


@dataclass
class Consistency:
    """One training per seed, judged together: passes out of N with the 95% interval."""

    results: dict[int, Result]
    figures: dict

    def __repr__(self) -> str:
        return "\n".join(over_seeds_lines(self.figures))


def consistency(model: ModelLike, recipe: Recipe | None = None, data: MNIST | None = None,
                seeds: list[int] | int = 5, options: Options | None = None, last_k: int = LAST_K) -> Consistency:
    """Train ``model`` once per seed (``seeds``: a list, or how many fresh seeds from 1001) and judge them."""
    from tinymnist.data import load_mnist

    data = data or load_mnist()
    seeds = fresh_seeds(seeds) if isinstance(seeds, int) else list(seeds)
    base = recipe or get_step(DEFAULT_RECIPE).recipe
    results = {seed: train(model, base.with_overrides(seed=seed), data, options) for seed in seeds}
    figures = over_seeds(seeds, [r.history for r in results.values()], next(iter(results.values())).params, last_k)
    return Consistency(results, figures)
