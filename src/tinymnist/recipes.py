"""Recipes (how one model is trained), Options (how a run is executed), Steps (a recipe with its target text,
notes and the seeds it was tuned on) and journeys.

A journey is an ordered list of exactly four Steps. Everything here is data: adding a step adds an entry,
never a branch in the code.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError, renamed, unknown_name
from .models import is_user_model, model_name

SCHEDULES = ("constant", "step", "onecycle")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
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
    label_smoothing: float = 0.0
    seed: int = 121

    def with_overrides(self, **overrides: object) -> Recipe:
        """A copy with the non-None ``overrides`` applied and checked."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}.")
        recipe = dataclasses.replace(self, **changes)
        recipe.check()
        return recipe

    def check(self, train_size: int | None = None, model: bool = True) -> None:
        """Raise UsageError, naming the setting, for any value training cannot use (``model=False``: the model
        is built by other means than its name)."""
        if model:
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
            raise UsageError(f"this recipe's LR cycle spans {self.cycle_epochs} epochs, more than the {self.epochs} "
                             f"asked for; use --epochs {self.cycle_epochs} or more.")
        if self.step_size < 1:
            raise UsageError(f"step size must be at least 1 epoch (got {self.step_size}).")

    def lr_at(self, epoch: int, batch: int, batches_per_epoch: int) -> float:
        """Learning rate for 0-based ``epoch`` and ``batch``; stateless, so resuming needs no scheduler state."""
        if self.schedule == "step":
            return self.lr * self.gamma ** (epoch // self.step_size)
        if self.schedule == "onecycle":
            total = (self.cycle_epochs or self.epochs) * batches_per_epoch
            t = min(epoch * batches_per_epoch + batch + 1, total)
            rise = max(1, round(self.warmup * total))
            if t <= rise:
                return self.lr * t / rise
            fall = (t - rise) / max(1, total - rise)
            return self.lr * (1 - fall * (1 - self.final_lr))
        return self.lr


@dataclass(frozen=True)
class Options:
    """How to run a recipe (not what to learn). ``precision`` and ``threads`` change the order of the arithmetic,
    so a seed's numbers come back only with both."""

    device: str = "auto"
    channels_last: bool = True  # pays on CPU (oneDNN) and on tensor-core GPUs
    precision: str = "auto"  # auto | fp32 | bf16 (autocast: convolutions in bf16, BN, loss and weights in fp32)
    threads: int | None = None  # CPU threads; None = torch's default (one per core)


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


def _original_step(n: int, target: str, notes: tuple[str, ...], published: str, **settings: object) -> Step:
    accs = tuple(float(a) for a in published.split())
    # The original's author chose each step by looking at one run with seed 121.
    return Step(f"original_step{n}", target, Recipe(model=f"original_step{n}", **settings), notes, accs, (121,))


# The original four steps, exactly as the notebooks ran them (SGD 0.01, momentum 0.9, batch 64, seed 121),
# with the per-epoch test accuracies the notebooks printed (step 2's notebook ran 20 epochs; its first 15).
ORIGINAL = (
    _original_step(1, "Set up the code: a plain CNN that trains, with a 6x6 kernel reading the last map.",
                   ("The original's own analysis: high parameter count; the big last kernel can be replaced by "
                    "global average pooling.",),
                   "97.09 98.02 98.43 98.20 98.68 98.64 98.61 98.99 98.92 98.77 98.94 98.88 98.55 98.77 98.92"),
    _original_step(2, "Cut parameters with global average pooling and a 1x1 output convolution.",
                   ("The original's own analysis: no overfitting, but still above the 10,000-parameter limit.",),
                   "89.98 95.44 97.15 97.68 97.29 98.40 98.06 98.21 98.56 98.52 98.57 97.52 98.56 98.54 98.71"),
    _original_step(3, "Add BatchNorm and cut the last block to 16 channels to go under 10,000 parameters.",
                   ("The original's own analysis: test accuracy swings from epoch to epoch; an LR schedule should "
                    "steady it.",),
                   "97.60 98.88 98.66 99.14 99.26 99.10 99.21 99.24 99.22 99.44 99.15 99.34 99.24 99.44 99.36"),
    _original_step(4, "Add StepLR(10, gamma 0.01), stepped per epoch, to hold accuracy after epoch 10.",
                   ("The original's own analysis: it reported 99.41-99.46% from epoch 10 on, from one run on one "
                    "seed.",),
                   "98.18 98.71 99.07 99.10 99.08 99.15 99.22 99.23 99.31 99.41 99.46 99.43 99.45 99.43 99.44",
                   schedule="step", step_size=10, gamma=0.01),
)

# tinymnist's own journey, `compact`. Steps 1-2 keep the original's plain recipe (SGD 0.01, momentum 0.9,
# batch 64, constant LR) to judge the architecture alone; step 3 adds the schedule and step 4 the augmentation.
PLAIN = Recipe(model="compact_8k7", seed=1)
ONECYCLE = dataclasses.replace(PLAIN, model="compact_7k4", lr=0.1, nesterov=True, schedule="onecycle", warmup=0.2,
                               final_lr=0.02)  # peak 0.1 per batch of 64, reached after 3 of 15 epochs
# ±7°, ±1.4 px, ±5% zoom; peak LR 0.2; the cycle ends with epoch 11 at 0.005 x the peak, so the last five epochs
# barely move the weights
AUGMENTED = dataclasses.replace(ONECYCLE, lr=0.2, rotate=7.0, shift=0.05, scale=0.05, cycle_epochs=11,
                                final_lr=0.005)
# The same with twice the updates (batch 32) at peak 0.1; the frontier recipes start from it.
AUGMENTED_B32 = dataclasses.replace(AUGMENTED, batch_size=32, lr=0.1)
TUNED_1_TO_5 = (1, 2, 3, 4, 5)  # every choice in the compact journey and the frontier looked at seeds 1-5

COMPACT = (
    Step("compact_step1", "Set up a sound skeleton under 10,000 parameters: padding-0 3x3 convolutions as in the "
         "original, Conv-BN-ReLU everywhere, global average pooling and a 1x1 head, channels in multiples of 8 "
         "(fast on CPU); the original's plain recipe.", PLAIN,
         ("The layer plan is the original's; what changes is BatchNorm before ReLU, 8/16 channels, and an "
          "8-channel 1x1 squeeze after the max-pool.",), tuned_seeds=TUNED_1_TO_5),
    Step("compact_step2", "Go under the 8,000-parameter bonus: 8 channels in the first layer, where a 3x3 kernel "
         "on one input channel has little to learn; same plain recipe.",
         dataclasses.replace(PLAIN, model="compact_7k4"),
         ("The first layer works on neighbourhoods of single pixels of one channel; it is the cheapest place to "
          "cut (compare steps 1 and 2 in the table).",), tuned_seeds=TUNED_1_TO_5),
    Step("compact_step3", "Steady the last epochs with a one-cycle learning rate: linear warm-up to 0.1 over 3 "
         "epochs, linear decay to 0.002 at the end (SGD, Nesterov momentum 0.9).", ONECYCLE,
         ("A decaying LR makes the last epochs settle instead of swinging; with no augmentation the model now "
          "fits its training set more closely than the test set.",), tuned_seeds=TUNED_1_TO_5),
    Step("compact_step4", "Close the train-test gap with mild per-sample augmentation (rotation ±7°, shift ±5%, "
         "zoom ±5%, batched on tensors), raise the peak LR to 0.2, and end the LR cycle with epoch 11 so that the "
         "last 5 epochs all train at the final LR: hold the accuracy target in each of them on every seed.",
         AUGMENTED,
         ("Chosen on seeds 1-5: peak LR 0.1 and 0.2 were compared there (`--lr 0.1`), and so was twice the "
          "updates at peak 0.1 (`--batch-size 32 --lr 0.1`), which holds as well but trains longer "
          "(docs/performance.md). docs/results.md has the fresh-seed confirmation.",), tuned_seeds=TUNED_1_TO_5),
)

JOURNEYS: dict[str, tuple[Step, ...]] = {"original": ORIGINAL, "compact": COMPACT}
RENAMED_JOURNEYS = {"seed": "original", "valid": "compact"}
RENAMED_STEPS = {**{f"seed_step{n}": f"original_step{n}" for n in range(1, 5)},
                 **{f"valid_step{n}": f"compact_step{n}" for n in range(1, 5)}}

# Recipes beyond the journeys (trainable by name, part of no four-step story): the smallest models tried.
FRONTIER = dataclasses.replace(AUGMENTED_B32, model="sep_3k8", lr=0.2, rotate=5.0, scale=0.0)
RECIPES = (
    Step("frontier_3k8", "3,784 parameters of plain 8-16-channel convolutions with the compact journey's batch-32 "
         "recipe.", dataclasses.replace(AUGMENTED_B32, model="compact_3k8"), tuned_seeds=(1,)),
    Step("frontier_sep_3k8", "The same parameters spent on depthwise-separable layers 24 wide, with milder "
         "augmentation (±5°, shift, no zoom) at peak LR 0.2.", FRONTIER,
         ("Its peak LR and augmentation were chosen on seeds 2-3 and checked on seeds 1-5.",),
         tuned_seeds=TUNED_1_TO_5),
    Step("frontier_sep_2k8", "frontier_sep_3k8's recipe one size smaller: its second layer separable too.",
         dataclasses.replace(FRONTIER, model="sep_2k8"), tuned_seeds=(1, 2)),
)


def all_steps() -> dict[str, Step]:
    """Every named step: the journeys' steps, then the other recipes."""
    return {step.name: step for steps in (*JOURNEYS.values(), RECIPES) for step in steps}


def get_journey(name: str) -> tuple[Step, ...]:
    """A built-in journey by name, or a user's journey file (``NAME.toml``)."""
    if name.endswith(".toml"):
        return read_journey_file(Path(name))
    if name in RENAMED_JOURNEYS:
        name = renamed("journey", name, RENAMED_JOURNEYS[name])
    if name not in JOURNEYS:
        raise unknown_name("journey", name, list(JOURNEYS))
    return JOURNEYS[name]


def get_step(name: str) -> Step:
    """A journey's step or another recipe, by name (old names accepted with a note)."""
    if name in RENAMED_STEPS:
        name = renamed("step", name, RENAMED_STEPS[name])
    steps = all_steps()
    if name not in steps:
        raise unknown_name("step or recipe", name, list(steps))
    return steps[name]


DEFAULT_RECIPE = "compact_step4"  # what a user's model trains with unless told otherwise


def user_model_step(model: str, recipe_of: str = DEFAULT_RECIPE) -> Step:
    """A user's model (``FILE.py:NAME``) trained with the recipe of the step ``recipe_of``; its runs live under
    RUNS/user/FILE-STEM/NAME, apart from every built-in step."""
    path, _, attr = model.rpartition(":")
    base = get_step(recipe_of)
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")
    return Step(f"user/{stem}/{attr}", f"{model} with the recipe of {base.name}",
                dataclasses.replace(base.recipe, model=model))


# --- a user's journey file ------------------------------------------------------------------------------

STEP_KEYS = {"name", "model", "target", "analysis"}  # and every Recipe field but `model`
RECIPE_KEYS = {f.name for f in dataclasses.fields(Recipe)} - {"model"}


def _unknown_key(path: Path, where: str, key: str, known: set[str]) -> UsageError:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}."
    return UsageError(f"{path}: unknown key {key!r} in {where}{hint}")


def _recipe_settings(path: Path, where: str, table: dict) -> dict:
    """The recipe settings of ``table``, each checked for its type (the values are checked by Recipe.check)."""
    settings = {}
    for key, value in table.items():
        if key not in RECIPE_KEYS:
            raise _unknown_key(path, where, key, RECIPE_KEYS | (STEP_KEYS if where.startswith("step") else set()))
        default = next(f.default for f in dataclasses.fields(Recipe) if f.name == key)
        kinds = (int, float) if isinstance(default, float) else (int,) if key == "cycle_epochs" else (type(default),)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
            wanted = {bool: "true or false", int: "a whole number", float: "a number", str: "text in quotes"}
            raise UsageError(f"{path}: {where} sets {key} = {value!r}; it must be {wanted[kinds[-1]]}.")
        settings[key] = float(value) if isinstance(default, float) else value
    return settings


def read_journey_file(path: Path) -> tuple[Step, ...]:
    """A user's four-step journey from TOML: optional ``[recipe]`` defaults, then four ``[[step]]`` tables with
    ``name``, ``model`` (FILE.py:NAME, the file relative to the journey file), ``target``, optionally
    ``analysis`` (the author's own, shown after the measured one) and any recipe setting. Step runs live under
    RUNS/user/JOURNEY-STEM/STEP-NAME."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; give the path of a journey file (tinymnist init writes one).") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({e}).") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML ({e}).") from None
    for key in raw:
        if key not in ("recipe", "step"):
            raise _unknown_key(path, "the journey", key, {"recipe", "step"})
    defaults = _recipe_settings(path, "[recipe]", raw.get("recipe", {}))
    tables = raw.get("step", [])
    if not isinstance(tables, list) or len(tables) != 4:
        raise UsageError(f"{path} has {len(tables) if isinstance(tables, list) else 'no'} [[step]] tables; a journey "
                         f"has exactly four.")
    steps = []
    for i, table in enumerate(tables, 1):
        where = f"step {i}"
        for key in ("name", "model", "target"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise UsageError(f"{path}: {where} needs {key} = \"...\" (text).")
        name = table["name"]
        if not name.replace("-", "_").isidentifier():
            raise UsageError(f"{path}: {where} is named {name!r}; use letters, digits, - and _ only.")
        model = table["model"]
        if not is_user_model(model):
            model_name(model)  # a built-in model by name is fine too; an unknown one is refused here
        else:
            file, _, attr = model.rpartition(":")
            model = f"{(path.parent / file).resolve()}:{attr}"
        settings = _recipe_settings(path, where, {k: v for k, v in table.items() if k not in STEP_KEYS})
        recipe = Recipe(model=model, **{**defaults, **settings})
        try:
            recipe.check()
        except UsageError as e:
            raise UsageError(f"{path}: {where}: {e}") from None
        analysis = table.get("analysis")
        steps.append(Step(f"user/{path.stem}/{name}", table["target"], recipe,
                          (f"The author's analysis: {analysis}",) if analysis else ()))
    if len({s.name for s in steps}) != 4:
        raise UsageError(f"{path}: two steps share a name; give each its own.")
    return tuple(steps)


def _check_journeys() -> None:
    for name, steps in JOURNEYS.items():
        assert len(steps) == 4, f"journey {name} must have exactly four steps"


_check_journeys()
