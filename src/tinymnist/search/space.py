"""What a study asks (SearchConfig) and the space it samples: the built-in space (the `tiny` family and the
compact journey's recipe shape) or a user's (FILE.py:NAME, a function of an Optuna trial)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import statistics
from collections import Counter
from dataclasses import dataclass

from tinymnist.data import VALIDATION
from tinymnist.errors import TinyMnistError, UsageError
from tinymnist.models import (
    count_params,
    create_model,
    format_args,
    is_user_model,
    split_user_model,
    tiny_fits,
    tiny_params,
    user_space,
)
from tinymnist.search.analysis import upgrade_config
from tinymnist.settings import DESIGN, SPACES  # written there so the command line shows them without torch
from tinymnist.steps.builtin import DEFAULT_RECIPE, get_step
from tinymnist.targets import LAST_K
from tinymnist.training.recipes import Recipe

PROBE = 300  # models sampled from a space before a study starts: the space works and fits --max-params
OVER_BUDGET = "over_budget"  # the user attribute of a sampled model above --max-params (pruned untrained)

# The built-in space: tinymnist's `tiny` family and the compact journey's recipe shape (SGD, Nesterov momentum
# 0.9, a one-cycle LR that rises for 20% of its cycle and decays linearly to 0.005 x its peak).
LAYERS, POOLS, SEPS, SQUEEZES = (4, 6), (1, 3), (2, 3, 4, 99), (0, 8, 16)
FIRST_WIDTHS, SECOND_WIDTHS, BODY_WIDTHS = (4, 8), (8, 12, 16), (12, 16, 20, 24, 32)
LR_RANGE, BATCHES, AUGMENT_RANGE = (0.03, 0.6), (32, 64, 128, 256), (0.0, 1.5)
HOLD_RANGE = (0, 4)  # epochs after the LR cycle ends, at its final LR
ROTATE, SHIFT, SCALE = 7.0, 0.05, 0.05  # augmentation strength 1 (the compact journey's)
# builtin-2 adds: a width per layer, a second max-pool, and the recipe settings the first space held fixed
SECOND_POOL = (0, 1, 2)  # 0: none; k: after the layer k past the first pool (when the image survives it)
WEIGHT_DECAYS, SMOOTHINGS, EMAS = (0.0, 1e-5, 5e-5, 1e-4, 5e-4), (0.0, 0.05, 0.1), (0.0, 0.99, 0.995, 0.999)
FINAL_LR_RANGE, WARMUP_RANGE = (0.001, 0.05), (0.1, 0.4)
ROTATE_RANGE, SHIFT_RANGE, SCALE_RANGE = (0.0, 12.0), (0.0, 0.12), (0.0, 0.12)


def optuna_module():  # optuna, imported on first use (an optional extra)
    try:
        import optuna
    except ImportError:
        raise UsageError("the search needs Optuna: pip install 'tinymnist[search]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class SearchConfig:
    """What a study asks; recorded in the study when it is created, and every worker that joins must agree."""

    max_params: int
    space: str = SPACES[0]  # a built-in space, or FILE.py:NAME: a function of a trial -> (model, recipe settings)
    epochs: tuple[int, ...] = (15,)  # the epoch counts the built-in space chooses from
    validation: int = VALIDATION  # the last this-many training images score the trials
    train_size: int | None = None  # train on the first N of the rest (default: all of it)
    seed: int = 1  # every trial trains this one seed (docs/search.md says why)
    last_k: int = LAST_K
    precision: str = "auto"
    score: str = "level"  # a trial's value: "level", the mean of its last K epochs, or "worst", their lowest
    design: int = DESIGN  # trials of the initial design enqueued when the study is created (built-in space)

    def to_attrs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> SearchConfig:
        """The config a study recorded; a setting it lacks is what studies did before the setting existed."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in upgrade_config(attrs).items() if k in fields}
        return cls(**values)

    def value(self, accs: list[float]) -> float:
        """A trial's value from its per-epoch validation accuracies (its last K epochs: all it has, if fewer)."""
        last = accs[-min(self.last_k, len(accs)):]
        return statistics.fmean(last) if self.score == "level" else min(last)



# --- spaces ---------------------------------------------------------------------------------------------------

def builtin_space(trial, epochs: tuple[int, ...]) -> tuple[str, dict]:  # an optuna Trial
    """A model of the `tiny` family (models.tiny) and recipe settings for ``trial``."""
    layers = trial.suggest_int("layers", *LAYERS)
    widths = [trial.suggest_categorical("w1", FIRST_WIDTHS), trial.suggest_categorical("w2", SECOND_WIDTHS)]
    widths += [trial.suggest_categorical("body", BODY_WIDTHS)] * (layers - 2)
    arch = {"w": ".".join(map(str, widths)), "pool": trial.suggest_int("pool", *POOLS),
            "sep": trial.suggest_categorical("sep", SEPS), "sq": trial.suggest_categorical("sq", SQUEEZES)}
    n_epochs = trial.suggest_categorical("epochs", epochs) if len(epochs) > 1 else epochs[0]
    hold = trial.suggest_int("hold", HOLD_RANGE[0], min(HOLD_RANGE[1], n_epochs - 1))
    strength = trial.suggest_float("augment", *AUGMENT_RANGE)
    settings = {"epochs": n_epochs, "batch_size": trial.suggest_categorical("batch_size", BATCHES),
                "lr": trial.suggest_float("lr", *LR_RANGE, log=True), "cycle_epochs": n_epochs - hold,
                "rotate": round(ROTATE * strength, 3), "shift": round(SHIFT * strength, 4),
                "scale": round(SCALE * strength, 4)}
    return f"tiny:{format_args(arch)}", settings


def builtin_space_2(trial, epochs: tuple[int, ...]) -> tuple[str, dict]:  # an optuna Trial
    """The `tiny` family with a width per layer and an optional second max-pool, and every setting of the
    one-cycle recipe: peak and final LR, warm-up, batch, rotation, shift and zoom apart, weight decay, label
    smoothing, weight averaging, and the epochs held at the cycle's end."""
    layers = trial.suggest_int("layers", *LAYERS)
    widths = [trial.suggest_categorical("w1", FIRST_WIDTHS), trial.suggest_categorical("w2", SECOND_WIDTHS)]
    widths += [trial.suggest_categorical(f"w{i}", BODY_WIDTHS) for i in range(3, layers + 1)]
    pool = trial.suggest_int("pool", *POOLS)
    after = trial.suggest_categorical("pool2", SECOND_POOL)
    pool2 = pool + after if after and tiny_fits(layers, pool, pool + after) else 0
    arch = {"w": ".".join(map(str, widths)), "pool": pool, "sep": trial.suggest_categorical("sep", SEPS),
            "sq": trial.suggest_categorical("sq", SQUEEZES), **({"pool2": pool2} if pool2 else {})}
    n_epochs = trial.suggest_categorical("epochs", epochs) if len(epochs) > 1 else epochs[0]
    hold = trial.suggest_int("hold", HOLD_RANGE[0], min(HOLD_RANGE[1], n_epochs - 1))
    settings = {"epochs": n_epochs, "batch_size": trial.suggest_categorical("batch_size", BATCHES),
                "lr": trial.suggest_float("lr", *LR_RANGE, log=True), "cycle_epochs": n_epochs - hold,
                "final_lr": trial.suggest_float("final_lr", *FINAL_LR_RANGE, log=True),
                "warmup": trial.suggest_float("warmup", *WARMUP_RANGE),
                "rotate": trial.suggest_float("rotate", *ROTATE_RANGE),
                "shift": trial.suggest_float("shift", *SHIFT_RANGE),
                "scale": trial.suggest_float("scale", *SCALE_RANGE),
                "weight_decay": trial.suggest_categorical("weight_decay", WEIGHT_DECAYS),
                "label_smoothing": trial.suggest_categorical("label_smoothing", SMOOTHINGS),
                "ema": trial.suggest_categorical("ema", EMAS)}
    return f"tiny:{format_args(arch)}", settings


BUILTIN = {"builtin-2": builtin_space_2, "builtin": builtin_space}


def check_named(model: str, named: str | None, trust: bool, study: str) -> None:
    """Refuse to import the space file a study names (in ``model``: a trial's model, or the study's space) unless
    the user named the same file and function (``named``, their --space) or allowed it (--trust-remote-code):
    a study export or storage from elsewhere never chooses the code that runs."""
    if not is_user_model(model) or trust:
        return
    path, attr, _ = split_user_model(model)
    if named and is_user_model(named):
        mine, their = split_user_model(named)[:2], (path, attr)
        if mine[1] == their[1] and mine[0].resolve() == their[0].resolve():
            return
    raise UsageError(f"study {study!r} builds its models with {path}:{attr}, code named by the study and not by "
                     f"you: read that file, then give --space {path}:{attr} (or --trust-remote-code) to run it.")

BASE_RECIPE = Recipe(model="tiny:w=8", optimizer="sgd", momentum=0.9, nesterov=True, schedule="onecycle",
                     warmup=0.2, final_lr=0.005)


def sample(trial, config: SearchConfig) -> Recipe:
    """The recipe (model included) ``config``'s space gives ``trial``; a user space's failure is one sentence."""
    if config.space in BUILTIN:
        model, settings = BUILTIN[config.space](trial, config.epochs)
    else:
        path, name, _ = split_user_model(config.space)
        try:
            _, settings = user_space(path, name)(trial)
        except (TinyMnistError, optuna_module().TrialPruned):
            raise
        except Exception as e:  # whatever the user's space raises, one sentence names it
            raise UsageError(f"the search space {config.space} failed ({type(e).__name__}: {e}); fix the "
                             f"function (it takes an Optuna trial and returns (model, recipe settings)).") from None
        if not isinstance(settings, dict):
            raise UsageError(f"the search space {config.space} returned {type(settings).__name__} as recipe "
                             f"settings; return (model, dict of recipe settings), e.g. (net, {{'lr': 0.1}}).")
        model = f"{config.space}:{format_args(trial.params)}"
    try:
        return BASE_RECIPE.with_overrides(model=model, seed=config.seed, **settings)
    except UsageError as e:
        raise UsageError(f"the search space {config.space} gave a recipe that cannot train: {e}") from None


# The initial design: the architecture axes crossed, each at its widest widths in budget, with the compact
# journey's recipe (batch 64, peak LR 0.2, augmentation strength 1, the cycle ending 4 epochs before the end).
_COMPACT = get_step(DEFAULT_RECIPE).recipe
DESIGN_RECIPE = {"batch_size": _COMPACT.batch_size, "lr": _COMPACT.lr, "augment": 1.0}  # strength 1: ROTATE, ...
DESIGN_HOLD = _COMPACT.epochs - _COMPACT.cycle_epochs
DESIGN_RECIPE_2 = {k: getattr(_COMPACT, k) for k in ("batch_size", "lr", "final_lr", "warmup", "rotate", "shift",
                                                      "scale", "weight_decay", "label_smoothing", "ema")}


def architectures() -> list[tuple[dict, int]]:
    """Every architecture of the built-in space (its parameters) with its parameter count."""
    found = []
    for layers, pool, sq, sep in itertools.product(range(LAYERS[0], LAYERS[1] + 1), range(POOLS[0], POOLS[1] + 1),
                                                   SQUEEZES, SEPS):
        for w1, w2, body in itertools.product(FIRST_WIDTHS, SECOND_WIDTHS, BODY_WIDTHS):
            params = tiny_params(".".join(map(str, [w1, w2] + [body] * (layers - 2))), pool, sep, sq)
            found.append(({"layers": layers, "pool": pool, "sq": sq, "sep": sep, "w1": w1, "w2": w2, "body": body},
                          params))
    return found


def builtin_architectures(max_params: int) -> int:
    """How many distinct models the built-in space has within ``max_params`` (sep at or past the last layer is
    the plain model: counted once)."""
    return len({_model_name(a) for a, params in architectures() if params <= max_params})


@functools.lru_cache(maxsize=8)
def builtin_2_architectures(max_params: int) -> int:
    """How many distinct models the space builtin-2 has within ``max_params``: every width per layer, pool
    position, second pool (where the image survives it), separable start and squeeze (sep at or past the last
    layer is the plain model, counted once). A second pool has no weights: each layout in budget counts once
    per second pool its depth allows."""
    total = 0
    for layers, pool, sq in itertools.product(range(LAYERS[0], LAYERS[1] + 1), range(POOLS[0], POOLS[1] + 1),
                                              SQUEEZES):
        if not tiny_fits(layers, pool):
            continue
        pools2 = len({pool + a if a and tiny_fits(layers, pool, pool + a) else 0 for a in SECOND_POOL})
        for sep in {min(sep, layers + 1) for sep in SEPS}:
            for widths in itertools.product(FIRST_WIDTHS, SECOND_WIDTHS, *[BODY_WIDTHS] * (layers - 2)):
                total += pools2 * (tiny_params(".".join(map(str, widths)), pool, sep, sq) <= max_params)
    return total


def _model_name(a: dict) -> str:
    widths = ".".join(map(str, [a["w1"], a["w2"]] + [a["body"]] * (a["layers"] - 2)))
    return f"w={widths},pool={a['pool']},sep={min(a['sep'], a['layers'] + 1)},sq={a['sq']}"


def initial_design(config: SearchConfig) -> list[dict]:
    """Up to ``config.design`` parameter sets of the built-in space, every one in budget: the architecture axes
    (layers, pool position, squeeze, where separable layers start) crossed, each combination at the widest
    widths that fit ``max_params``, then chosen greedily so that every value of every axis is covered as
    evenly as it can be (ties broken by a fixed shuffle: the design is the same on every host)."""
    if config.space not in BUILTIN or not config.design:
        return []
    epochs = max(config.epochs)
    fixed = {"hold": min(DESIGN_HOLD, epochs - 1), **({"epochs": epochs} if len(config.epochs) > 1 else {}),
             **(DESIGN_RECIPE if config.space == "builtin" else DESIGN_RECIPE_2)}
    widest: dict[tuple, tuple[int, dict]] = {}
    for a, params in architectures():
        layout = (a["layers"], a["pool"], a["sq"], a["sep"])
        if params <= config.max_params and params > widest.get(layout, (0, {}))[0]:
            widest[layout] = (params, a)
    combos = [a for _, a in widest.values()]
    random.Random(0).shuffle(combos)
    axes, chosen, used = ("layers", "pool", "sq", "sep"), [], Counter()
    while combos and len(chosen) < config.design:
        best = min(combos, key=lambda c: sum(used[(a, c[a])] for a in axes))
        combos.remove(best)
        used.update((a, best[a]) for a in axes)
        if config.space == "builtin-2":  # a width per layer, no second pool
            best = {**{k: v for k, v in best.items() if k != "body"}, "pool2": 0,
                    **{f"w{i}": best["body"] for i in range(3, best["layers"] + 1)}}
        chosen.append({**best, **fixed})
    return chosen


def probe_space(config: SearchConfig, samples: int = PROBE) -> int:
    """Sample ``samples`` models from the space at random (no training): a space that fails, or whose every
    model is above ``max_params``, is refused before a study starts. Returns the smallest parameter count."""
    optuna = optuna_module()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    smallest = None
    for _ in range(samples):
        trial = study.ask()
        recipe = sample(trial, config)
        params = count_params(create_model(recipe.model))
        smallest = params if smallest is None else min(smallest, params)
        study.tell(trial, 0.0)
        if smallest <= config.max_params:
            return smallest
    raise UsageError(f"--max-params {config.max_params:,} is below every model sampled from the space "
                     f"{config.space} ({samples} samples, the smallest has {smallest:,} parameters); raise it.")


