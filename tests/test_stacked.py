"""Seeds at once (bench/stacked_seeds.py): a stacked model is its seeds' models, forward, backward, statistics
and weights."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import CPU
from tinymnist.errors import UsageError
from tinymnist.models import Net, create_model
from tinymnist.training.engine import Trainer
from tinymnist.training.recipes import Recipe, RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # a benchmark's module, not the package's
from stacked_seeds import StackedTrainer, stack, unstack

MODELS = ["compact_7k4", "sep_3k8", "original_step4", "tiny:w=8.12.12.12,pool=1,sep=2,sq=8,pool2=3"]


def seeded(name: str, seeds: list[int]) -> list[nn.Module]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(create_model(name))
    return models


@pytest.mark.parametrize("name", MODELS)
def test_a_stacked_model_trains_as_its_seeds_do(name):
    seeds = [1, 2, 3]
    models = seeded(name, seeds)
    stacked = stack(models)
    torch.manual_seed(0)
    x = torch.randn(16, len(seeds), 28, 28)
    y = torch.randint(0, 10, (16, len(seeds)))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) for m in models]
    stacked_optimizer = torch.optim.SGD(stacked.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):  # momentum and BatchNorm statistics carry over from step to step
        out = stacked(x)
        assert out.shape == (16, len(seeds), 10)
        loss = sum(nn.functional.nll_loss(out[:, n], y[:, n]) for n in range(len(seeds)))
        stacked_optimizer.zero_grad()
        loss.backward()
        stacked_optimizer.step()
        for n, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            own = model(x[:, n:n + 1])
            torch.testing.assert_close(out[:, n], own, atol=1e-4, rtol=1e-4)
            optimizer.zero_grad()
            nn.functional.nll_loss(own, y[:, n]).backward()
            optimizer.step()
    stacked.eval()
    for n, model in enumerate(models):
        model.eval()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(unstack(stacked, n)[key], value, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(stacked(x)[:, n], model(x[:, n:n + 1]), atol=1e-4, rtol=1e-4)


def test_a_seed_unstacked_loads_into_its_own_model():
    models = seeded("sep_3k8", [5, 6])
    fresh = create_model("sep_3k8")
    fresh.load_state_dict(unstack(stack(models), 1))
    for a, b in zip(fresh.state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_models_that_cannot_be_stacked_are_refused_in_one_sentence():
    with pytest.raises(UsageError, match="one architecture"):
        stack([create_model("compact_7k4"), create_model("sep_3k8")])
    with pytest.raises(UsageError, match="its own forward"):
        stack([nn.Linear(784, 10)])
    with pytest.raises(UsageError, match="Linear layer"):
        stack([Net(nn.Linear(784, 10))])


def test_seeds_trained_at_once_are_the_runs_their_own_trainers_make(small_mnist):
    data = small_mnist.subset(320, 200)
    recipe = Recipe(model="tiny:w=4.8.8,pool=2", epochs=2, batch_size=64, seed=0, rotate=5.0, shift=0.05,
                    scale=0.05, elastic=8.0, ema=0.9)
    together = StackedTrainer(recipe, data, [3, 4], CPU)
    history = [together.run_epoch() for _ in range(recipe.epochs)]
    for k, seed in enumerate([3, 4]):
        alone = Trainer(RunSpec(recipe=dataclasses.replace(recipe, seed=seed), options=CPU), data)
        for epoch in range(recipe.epochs):
            own, stacked = alone.run_epoch(), history[epoch][k]
            assert stacked["seed"] == seed and stacked["epoch"] == own["epoch"]
            assert stacked["train_loss"] == pytest.approx(own["train_loss"], rel=1e-4)
            assert stacked["test_loss"] == pytest.approx(own["test_loss"], rel=1e-4)
            assert abs(stacked["test_acc"] - own["test_acc"]) <= 0.5  # one image of 200, from summation order
        for key, value in alone.saved_model.state_dict().items():
            torch.testing.assert_close(together.seed_model(k).state_dict()[key], value, atol=1e-4, rtol=1e-4)


def test_seeds_at_once_need_different_seeds(small_mnist):
    with pytest.raises(UsageError, match="different seeds"):
        StackedTrainer(Recipe(model="tiny:w=4.8.8,pool=2", epochs=1, batch_size=64, seed=0, cycle_epochs=1),
                       small_mnist.subset(64, 10), [1, 1], CPU)
