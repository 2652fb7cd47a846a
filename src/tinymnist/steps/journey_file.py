"""A user's four-step journey, read from a TOML file into the same Steps as the built-in ones."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path

from tinymnist.errors import UsageError
from tinymnist.models import is_user_model, model_name
from tinymnist.training.recipes import Recipe, Step

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
