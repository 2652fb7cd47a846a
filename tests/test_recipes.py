"""Recipes, steps and journeys as data: their checks, names and tuning seeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinymnist.errors import NameNote, Note, UsageError
from tinymnist.models import create_model, family_model, list_models
from tinymnist.names import RENAMED
from tinymnist.steps.builtin import JOURNEYS, RECIPES, all_steps, get_journey, get_step
from tinymnist.training.recipes import Options, Recipe, RunSpec


def test_every_journey_has_four_steps_with_known_models_and_tuning_seeds() -> None:
    for name, steps in JOURNEYS.items():
        assert len(steps) == 4, name
    for step in all_steps().values():
        # a registered model, or a registered family's member by its arguments (tiny:w=...)
        assert (step.recipe.model in list_models() or family_model(step.recipe.model)) and step.target
        create_model(step.recipe.model)
        assert step.tuned_seeds, f"{step.name} must say which seeds chose it"
        step.recipe.check()


def test_names_are_unique_and_never_collide_with_reserved_run_folders() -> None:
    names = [s.name for steps in JOURNEYS.values() for s in steps] + [s.name for s in RECIPES]
    assert len(names) == len(set(names))
    assert not {"user", "search"} & set(names)  # run_dir's first segment for runs from elsewhere


def test_old_names_resolve_with_a_note() -> None:
    for old, new in RENAMED["step"].items():
        with pytest.warns(NameNote, match=f"step '{old}' is now called '{new}'"):
            assert get_step(old).name == new
    for old, new in RENAMED["journey"].items():
        with pytest.warns(NameNote, match=f"journey '{old}'"):
            assert get_journey(old) == JOURNEYS[new]


@pytest.mark.parametrize("change,message", [
    ({"epochs": 0}, "epochs must be at least 1"), ({"batch_size": 0}, "batch size must be at least 1"),
    ({"lr": 0.0}, "learning rate must be greater than 0"), ({"optimizer": "sdg"}, "Did you mean 'sgd'"),
    ({"schedule": "onecylce"}, "Did you mean 'onecycle'"), ({"warmup": 1.0}, "warmup must be a fraction"),
    ({"cycle_epochs": 20}, "--epochs 20 or more"), ({"step_size": 0}, "step size must be at least 1"),
    ({"model": "compact_7k5"}, "Did you mean 'compact_7k4'")])
def test_bad_recipe_settings_name_the_setting(change: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        dataclasses.replace(Recipe(model="compact_7k4"), **change).check()


def test_overrides_are_checked_and_unknown_ones_refused() -> None:
    recipe = get_step("compact_step4").recipe
    assert recipe.with_overrides(lr=0.1, epochs=None).lr == 0.1
    with pytest.raises(UsageError, match="unknown recipe setting"):
        recipe.with_overrides(momentm=0.5)
    with pytest.raises(UsageError, match="unknown recipe setting"):
        recipe.with_overrides(epochs=5, momentm=0.5)


def test_fewer_epochs_than_the_lr_cycle_scale_the_cycle_with_a_note() -> None:
    recipe = get_step("compact_step4").recipe  # 15 epochs, the LR cycle over the first 11
    with pytest.warns(Note, match="spans 11 of its 15 epochs; with 5 epochs it spans 4"):
        assert recipe.with_overrides(epochs=5).cycle_epochs == 4
    with pytest.warns(Note, match="with 1 epoch it spans 1"):
        assert recipe.with_overrides(epochs=1).cycle_epochs == 1
    assert recipe.with_overrides(epochs=12).cycle_epochs == 11  # the cycle still fits: as it was


@pytest.mark.parametrize("setting", ["rotate", "shift", "scale", "elastic"])
def test_any_distortion_makes_a_recipe_augmented(setting: str) -> None:
    plain = Recipe(model="compact_7k4")
    assert not plain.augmented and plain.with_overrides(**{setting: 0.1}).augmented


def test_specs_and_recipes_take_keywords_only() -> None:
    from tinymnist.data import MNIST

    recipe = Recipe(model="compact_7k4")
    for build in (lambda: Recipe("compact_7k4"), lambda: RunSpec(recipe), lambda: Options("cpu"),
                  lambda: MNIST(torch.zeros(1, 28, 28), torch.zeros(1), torch.zeros(1, 28, 28), torch.zeros(1))):
        with pytest.raises(TypeError, match="positional"):
            build()


def test_front_5k5_is_band_4k_6k_trial_10_exactly() -> None:
    """docs/search-guide.md pools front_5k5's fresh seeds with trial 10's as draws of one recipe: the same network
    (the same weights from the same seed) and the same recipe as the study export's trial 10."""
    import json
    from pathlib import Path

    from tinymnist.models import create_model
    from tinymnist.search.study import trial_recipe

    root = Path(__file__).resolve().parents[1]
    export = json.loads((root / "evidence" / "studies" / "band-4k-6k.json").read_text())
    trial = trial_recipe(export, 10)
    step = get_step("front_5k5").recipe
    assert dataclasses.replace(trial, model=step.model) == step
    nets = []
    for model in (step.model, f"{root}/{trial.model}"):
        torch.manual_seed(1)
        nets.append(create_model(model).state_dict())
    assert list(nets[0]) == list(nets[1]) and all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
