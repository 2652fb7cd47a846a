"""A user's four-step journey, read from a TOML file into the same Steps as the built-in ones.

``journey_entries`` reads the file with Python's standard library alone (``tinymnist check`` runs on a CI
machine with no torch); ``read_journey_file`` builds the Steps a training needs from those entries."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from tinymnist.errors import UsageError

if TYPE_CHECKING:
    from tinymnist.training.recipes import Step

STEP_KEYS = {"name", "model", "target", "analysis"}  # and every recipe setting but `model`
JOURNEY_KEYS = {"recipe", "step", "title"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``[[step]]`` of a journey file as written: ``model`` with its file resolved against the journey's
    folder, ``settings`` the recipe settings it sets ([recipe] merged with its own), ``analysis`` the author's."""

    name: str
    model: str
    target: str
    settings: dict
    analysis: str | None = None

    def step_name(self, journey: Path) -> str:
        """Where its runs live under RUNS: user/JOURNEY-STEM/NAME."""
        return f"user/{journey.stem}/{self.name}"


@dataclasses.dataclass(frozen=True)
class JourneyFile:
    path: Path
    title: str  # the file's `title`, else the name of the folder that holds it
    entries: tuple[Entry, ...]


def _unknown_key(path: Path, where: str, key: str, known: set[str]) -> UsageError:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}."
    return UsageError(f"{path}: unknown key {key!r} in {where}{hint}")


def _is_user_model(model: str) -> bool:
    return ".py:" in model  # as tinymnist.models.is_user_model, which this reader must not import (torch)


def journey_entries(path: Path) -> JourneyFile:
    """The title and four entries of a journey file, checked for their shape (four steps, each with a name,
    model and target; no unknown top-level key). Standard library only: the settings' names and values are
    checked by ``read_journey_file``."""
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
        if key not in JOURNEY_KEYS:
            raise _unknown_key(path, "the journey", key, JOURNEY_KEYS)
    title = raw.get("title", path.resolve().parent.name)
    if not isinstance(title, str) or not title.strip():
        raise UsageError(f"{path}: title must be text in quotes, like title = \"My tiny CNN\".")
    defaults = raw.get("recipe", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{path}: recipe must be a table ([recipe]) of recipe settings.")
    tables = raw.get("step", [])
    if not isinstance(tables, list) or len(tables) != 4:
        raise UsageError(f"{path} has {len(tables) if isinstance(tables, list) else 'no'} [[step]] tables; a journey "
                         f"has exactly four.")
    entries = []
    for i, table in enumerate(tables, 1):
        where = f"step {i}"
        for key in ("name", "model", "target"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise UsageError(f"{path}: {where} needs {key} = \"...\" (text).")
        name = table["name"]
        if not name.replace("-", "_").isidentifier():
            raise UsageError(f"{path}: {where} is named {name!r}; use letters, digits, - and _ only.")
        analysis = table.get("analysis")
        if analysis is not None and not isinstance(analysis, str):
            raise UsageError(f"{path}: {where} sets analysis = {analysis!r}; it must be text in quotes "
                             f"(triple quotes for several lines).")
        model = table["model"]
        if _is_user_model(model):
            file, _, attr = model.rpartition(".py:")
            model = f"{(path.parent / (file + '.py')).resolve()}:{attr}"
        settings = {**defaults, **{k: v for k, v in table.items() if k not in STEP_KEYS}}
        entries.append(Entry(name, model, table["target"], settings, analysis.strip() if analysis else None))
    if len({e.name for e in entries}) != 4:
        raise UsageError(f"{path}: two steps share a name; give each its own.")
    return JourneyFile(path, title.strip(), tuple(entries))


def _recipe_settings(path: Path, where: str, table: dict) -> dict:
    """The recipe settings of ``table``, each checked for its type (the values are checked by Recipe.check)."""
    from tinymnist.training.recipes import Recipe

    known = {f.name for f in dataclasses.fields(Recipe)} - {"model"}
    settings = {}
    for key, value in table.items():
        if key not in known:
            raise _unknown_key(path, where, key, known | (STEP_KEYS if where.startswith("step") else set()))
        default = next(f.default for f in dataclasses.fields(Recipe) if f.name == key)
        kinds = (int, float) if isinstance(default, float) else (int,) if key == "cycle_epochs" else (type(default),)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
            wanted = {bool: "true or false", int: "a whole number", float: "a number", str: "text in quotes"}
            raise UsageError(f"{path}: {where} sets {key} = {value!r}; it must be {wanted[kinds[-1]]}.")
        settings[key] = float(value) if isinstance(default, float) else value
    return settings


def read_journey_file(path: Path) -> tuple[Step, ...]:
    """A user's four-step journey from TOML: optional ``title`` and ``[recipe]`` defaults, then four ``[[step]]``
    tables with ``name``, ``model`` (FILE.py:NAME, the file relative to the journey file), ``target``, optionally
    ``analysis`` (the author's own: the report's Analysis) and any recipe setting. Step runs live under
    RUNS/user/JOURNEY-STEM/STEP-NAME."""
    from tinymnist.models import model_name
    from tinymnist.training.recipes import Recipe, Step

    journey = journey_entries(path)
    tables = tomllib.loads(path.read_text())
    defaults = _recipe_settings(path, "[recipe]", tables.get("recipe", {}))
    steps = []
    for i, entry in enumerate(journey.entries, 1):
        where = f"step {i}"
        if not _is_user_model(entry.model):
            model_name(entry.model)  # a built-in model by name is fine too; an unknown one is refused here
        own = {k: v for k, v in tables["step"][i - 1].items() if k not in STEP_KEYS}
        recipe = Recipe(model=entry.model, **{**defaults, **_recipe_settings(path, where, own)})
        try:
            recipe.check()
        except UsageError as e:
            raise UsageError(f"{path}: {where}: {e}") from None
        steps.append(Step(entry.step_name(path), entry.target, recipe))
    return tuple(steps)


def journey_step(name: str) -> tuple[Step, Path]:
    """``JOURNEY.toml:STEP``: that step of a journey file, with its own recipe, and the journey file."""
    file, _, label = name.rpartition(":")
    path = Path(file)
    steps = read_journey_file(path)
    labels = [step.name.rsplit("/", 1)[-1] for step in steps]
    if label not in labels:
        close = difflib.get_close_matches(label, labels, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"its steps are {', '.join(labels)}."
        raise UsageError(f"{path} has no step named {label!r}; {hint}")
    return steps[labels.index(label)], path


def preflight(steps: tuple[Step, ...]) -> list[str]:
    """A journey checked whole before anything trains: every step's model is built and run on a probe batch of
    two blank 28x28 images, which must give ten scores per image; the first that fails is a UsageError naming
    its step. Returns a line per step with its parameters judged against the limits."""
    import torch

    from tinymnist.models import count_params, create_model
    from tinymnist.targets import BONUS_PARAMS, MAX_PARAMS

    lines = []
    for i, step in enumerate(steps, 1):
        label, model = step.name.rsplit("/", 1)[-1], step.recipe.model
        shown = f"{Path(model.rpartition('.py:')[0]).name}.py:{model.rpartition('.py:')[2]}" if _is_user_model(model) \
            else model
        try:
            built = create_model(model)
        except UsageError as e:
            raise UsageError(f"step {i} ({label}): {e}") from None
        try:
            with torch.no_grad():
                out = built.eval()(torch.zeros(2, 1, 28, 28))
        except Exception as e:  # whatever a user's forward raises: said in one sentence, before any training
            raise UsageError(f"step {i} ({label}): {shown} fails on a probe batch of two 28x28 images "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}).") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"step {i} ({label}): {shown} returns {got} for a batch of two images; a model "
                             f"returns one score per digit, shape (2, 10).")
        params = count_params(built)
        limit = (f"under the {MAX_PARAMS:,} limit and the {BONUS_PARAMS:,} bonus" if params < BONUS_PARAMS else
                 f"under the {MAX_PARAMS:,} limit, not the {BONUS_PARAMS:,} bonus" if params < MAX_PARAMS else
                 f"{params - MAX_PARAMS + 1:,} over the {MAX_PARAMS:,} limit")
        lines.append(f"  {i}. {label}: {shown}, {params:,} params ({limit}); recipe settings check")
    return lines
