"""tinymnist from Python: train a class or factory, read the verdict, plot, check over seeds, layer table."""

from __future__ import annotations

import pytest
from torch import nn

import tinymnist as tm


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.integration
def test_train_a_class_and_a_factory(small_mnist) -> None:
    recipe = tm.recipe("compact_step3", epochs=2)
    cpu = tm.Options(device="cpu")
    a = tm.train(Small, recipe, small_mnist, cpu)
    b = tm.train(lambda: Small(), recipe, small_mnist, cpu)
    assert [m["epoch"] for m in a.history] == [1, 2] and a.params == 72 + 16 + 1168 + 170
    strip = lambda h: [{k: v for k, v in m.items() if "seconds" not in k} for m in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)  # same seed, same initial weights, same draw
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"] and not a.verdict.met  # two epochs: no hold
    assert "targets NOT met" in repr(a) and a.plot()._repr_png_()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_consistency_and_layers(small_mnist) -> None:
    result = tm.consistency(Small, tm.recipe("compact_step3", epochs=2), small_mnist, seeds=[1001, 1002],
                            options=tm.Options(device="cpu"), last_k=1)
    assert list(result.results) == [1001, 1002] and result.figures["seeds_run"] == 2
    assert "95% interval" in repr(result)
    table = repr(tm.show_layers(Small()))
    assert "total: 1,426 params" in table and "final receptive field" in table
    assert "total: 7,432 params" in repr(tm.show_layers("compact_7k4"))


def test_a_model_that_is_not_one_is_refused(small_mnist) -> None:
    with pytest.raises(tm.errors.UsageError, match="maps .* to \\(2, 5\\)"):
        tm.train(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), tm.recipe("original_step4", epochs=1),
                 small_mnist)
