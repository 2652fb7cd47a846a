from __future__ import annotations

import pytest
import torch

from tinymnist.errors import UsageError
from tinymnist.models import count_params, create_model, list_models

# The documented parameter count of every registered model (README, `tinymnist models`).
DOCUMENTED_PARAMS = {"original_step1": 21_562, "original_step2": 10_362, "original_step3": 8_066,
                     "original_step4": 8_066, "compact_8k7": 8_672, "compact_7k4": 7_432, "compact_3k8": 3_784,
                     "sep_3k8": 3_768, "sep_2k8": 2_816}


def test_every_model_is_documented() -> None:
    assert set(list_models()) == set(DOCUMENTED_PARAMS)


@pytest.mark.parametrize("name", list_models())
def test_model_builds_maps_and_learns(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    assert count_params(model) == DOCUMENTED_PARAMS[name]
    x = torch.randn(5, 1, 28, 28)
    out = model(x)
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)  # log-probabilities
    torch.nn.functional.nll_loss(out, torch.arange(5)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{name}.{pname} got no gradient"


def test_seed_layer_orders() -> None:
    def kinds(block: torch.nn.Module) -> list[str]:
        return [type(m).__name__ for m in block]
    assert kinds(create_model("original_step3")[0]) == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert kinds(create_model("original_step4")[0]) == ["Conv2d", "ReLU", "BatchNorm2d"]
    for name in ("original_step1", "original_step2", "original_step3", "original_step4"):
        for m in create_model(name).modules():
            if isinstance(m, torch.nn.Conv2d):
                assert m.bias is None and m.padding == (0, 0)
            assert not isinstance(m, torch.nn.Dropout)


def test_unknown_model_suggests() -> None:
    with pytest.raises(UsageError, match="Did you mean 'original_step4'"):
        create_model("original_stpe4")


def test_separable_layer_counts_its_weights() -> None:
    from tinymnist.models import separable

    block = separable(16, 24)
    depthwise, pointwise = block[0], block[1]
    assert depthwise.groups == 16 and depthwise.weight.shape == (16, 1, 3, 3)
    assert pointwise.weight.shape == (24, 16, 1, 1)
    assert count_params(block) == 9 * 16 + 16 * 24 + 2 * 24  # depthwise + pointwise + BN
    assert block(torch.randn(2, 16, 12, 12)).shape == (2, 24, 10, 10)


def test_old_model_names_still_build_with_a_note() -> None:
    from tinymnist.errors import NameNote
    from tinymnist.names import RENAMED

    for old, new in RENAMED["model"].items():
        with pytest.warns(NameNote, match=f"'{old}' is now called '{new}'"):
            model = create_model(old)
        assert count_params(model) == DOCUMENTED_PARAMS[new]


# --- the parametric family the search samples ---

@pytest.mark.parametrize(("family", "registered"), [
    ("tiny:w=8.16.24.24.24,pool=2,sep=2", "sep_2k8"),
    ("tiny:w=8.16.24.24.24,pool=2,sep=3", "sep_3k8"),
    ("tiny:w=8.16.16.16.16,pool=2,sq=8", "compact_7k4"),
])
def test_tiny_family_rebuilds_the_registered_designs(family: str, registered: str) -> None:
    a, b = create_model(family), create_model(registered)
    assert count_params(a) == count_params(b)
    assert [tuple(v.shape) for v in a.state_dict().values()] == [tuple(v.shape) for v in b.state_dict().values()]


def test_a_second_pool_halves_the_map_again() -> None:
    import torch

    from tinymnist.models import tiny_fits

    one, two = create_model("tiny:w=8.16.16.16.16,pool=2"), create_model("tiny:w=8.16.16.16.16,pool=2,pool2=4")
    assert count_params(one) == count_params(two)
    x = torch.zeros(2, 1, 28, 28)
    def side(net: torch.nn.Module) -> int:  # the map the global average pooling reads
        return torch.nn.Sequential(*list(net)[:-2])(x).shape[-1]

    assert side(two) == 2 and side(one) == 6  # 28 -2 -2 = 24, /2, -2 -2 = 8, /2, -2 = 2
    assert tiny_fits(5, 2, 4) and not tiny_fits(6, 2, 4)


@pytest.mark.parametrize("name", ["tiny:w=8.16.16.16.16.16.16.16,pool=2", "tiny:w=8,pool=3", "tiny:w=x.y",
                                  "tiny:w=4.8.8.8.16.16,pool=2,pool2=4", "tiny:w=8.8.8,pool=2,pool2=2",
                                  "tiny:pool=2", "tinny:w=8"])
def test_bad_family_arguments_are_one_sentence(name: str) -> None:
    with pytest.raises(UsageError):
        create_model(name)
