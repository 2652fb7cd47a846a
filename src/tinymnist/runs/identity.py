"""A run's identity: what makes two runs the same run, and the words for how they differ."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from tinymnist.errors import UsageError
from tinymnist.modelnames import file_sha256, is_user_model, split_user_model
from tinymnist.training.recipes import RunSpec

if TYPE_CHECKING:
    from tinymnist.data import MNIST

UNKNOWN = "unknown"  # an identity part an earlier record does not hold


def _model_identity(model: str, sha256: str | None) -> dict:
    """A registered model by its name; a user's file by its content (the path it was named by plays no part)."""
    if not is_user_model(model):
        return {"model": model, "model_sha256": None}
    return {"model": model.rpartition(".py:")[2], "model_sha256": sha256 or UNKNOWN}


def _identity(spec: RunSpec, sizes: tuple[int, int], full: tuple[int, int], sha256: str | None) -> dict:
    recipe = asdict(spec.recipe)
    recipe.pop("model")
    return {**_model_identity(spec.recipe.model, sha256), "recipe": recipe,
            "data": {"held_out": spec.held_out, "train_images": sizes[0] if sizes[0] != full[0] else None,
                     "train_of": full[0], "test_images": sizes[1] if sizes[1] != full[1] else None,
                     "test_of": full[1]},
            "options": asdict(spec.options)}


def identity(spec: RunSpec, data: MNIST) -> dict:
    """What a run of ``spec`` on ``data`` would be: the model (its registered name, or the SHA-256 of the user's
    file and the name in it), the recipe, the data (how many of how many training and held-out images, and the
    held-out split's kind) and the options that change the numbers, as ``spec`` gives them (a run records them
    resolved: runner.identity resolves them first). Compare it with ``RunRecord.differs_from``."""
    sizes = (spec.train_images or len(data.train_labels), spec.held_out_images or len(data.held_out_labels))
    sha = None
    if is_user_model(spec.recipe.model):
        path = split_user_model(spec.recipe.model)[0]
        try:
            sha = file_sha256(path)
        except OSError as e:
            raise UsageError(f"{path} cannot be read ({e.strerror}); give FILE.py:NAME with the path of your "
                             f"model file.") from None
    return _identity(spec, sizes, data.full_sizes or sizes, sha)


def _images(count: int | None, of: int | None, what: str) -> str:
    """'2,000 of 60,000 training images', 'all 60,000 training images', or without the total when unknown."""
    if count is None:
        return f"all {of:,} {what}" if of else f"all {what}"
    return f"{count:,} of {of:,} {what}" if of else f"{count:,} {what}"


def _data_words(data: dict) -> str:
    held_out = "test" if data["held_out"] == "test" else "validation"
    return (f"{_images(data['train_images'], data['train_of'], 'training images')}, scored on "
            f"{_images(data['test_images'], data['test_of'], held_out + ' images')}")


def _differences(mine: dict, other: dict) -> list[str]:
    found = []
    if mine["model"] != other["model"]:
        found.append(f"model ({mine['model']} here, {other['model']} asked)")
    elif mine["model_sha256"] == UNKNOWN:
        found.append("model file (this record, from an earlier version, holds no hash of it)")
    elif mine["model_sha256"] != other["model_sha256"]:
        found.append("model file's code (its SHA-256 differs)")
    changed = [f"{k} {mine['recipe'].get(k)!r} here, {v!r} asked" for k, v in other["recipe"].items()
               if mine["recipe"].get(k, v) != v]
    if changed:
        found.append(f"recipe ({'; '.join(changed)})")
    a, b = mine["data"], other["data"]
    other_totals = any(a[k] and b[k] and a[k] != b[k] for k in ("train_of", "test_of"))  # unknown: not compared
    if any(a[k] != b[k] for k in ("held_out", "train_images", "test_images")) or other_totals:
        found.append(f"data ({_data_words(a)} here, {_data_words(b)} asked)")
    changed = [f"{k} {mine['options'].get(k)!r} here, {v!r} asked" for k, v in other["options"].items()
               if mine["options"].get(k, v) != v]
    if changed:
        found.append(f"options ({'; '.join(changed)})")
    return found
