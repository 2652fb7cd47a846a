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


# --- the layer table: receptive fields worked out by hand, through modules and functions alike ---

def _table(model: torch.nn.Module) -> list:
    from tinymnist.models.layers import layer_table

    return layer_table(model)


class FunctionalLeNet(torch.nn.Module):
    """The PyTorch MNIST example's layout: pooling and activations written as functions in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 10, 5), torch.nn.Conv2d(10, 20, 5)
        self.fc1, self.fc2 = torch.nn.Linear(320, 50), torch.nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, 320)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def test_functional_pooling_and_a_linear_head_by_hand() -> None:
    # conv5: 1 + 4 = 5 | F.max_pool2d 2: 5 + 1 = 6, jump 2 | conv5: 6 + 4*2 = 14 | F.max_pool2d 2: 14 + 2 = 16,
    # jump 4, a 4x4 map | flatten: each feature still sees 16 | fc1 over the flattened 4x4 map sees the union of
    # its windows: 16 + 3*4 = 28 | fc2: 28.
    rows = _table(FunctionalLeNet())
    assert [r.name for r in rows] == ["conv 5x5 1->10", "maxpool 2 (F)", "conv 5x5 10->20", "maxpool 2 (F)",
                                      "flatten (view)", "linear 320->50", "linear 50->10"]
    assert [r.rf for r in rows] == [5, 6, 14, 16, 16, 28, 28]
    assert [r.jump for r in rows] == [1, 2, 2, 4, None, None, None]
    assert [r.shape for r in rows][-3:] == [(320,), (50,), (10,)]


class StridedDilated(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(4, 8, 3, dilation=2)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.mean(self.b(self.a(x)), dim=(2, 3)))


def test_strided_and_dilated_convolutions_and_a_spatial_mean_by_hand() -> None:
    # conv3 stride 2 pad 1: RF 3, jump 2, 14x14 | conv3 dilation 2: 3 + (3-1)*2*2 = 11, jump 2, 14 - 4 = 10x10 |
    # torch.mean over H and W: the union of 10 windows 2 apart, 11 + 9*2 = 29 | the Linear: 29.
    rows = _table(StridedDilated())
    assert [r.rf for r in rows] == [3, 11, 29, 29]
    assert [r.jump for r in rows][:2] == [2, 2] and rows[1].shape == (8, 10, 10)
    assert rows[0].name == "conv 3x3 1->4, pad 1, stride 2" and rows[1].name == "conv 3x3 4->8, dilation 2"


class PaddedAdaptive(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(self.features(x), 2)
        return self.classifier(self.pool(x))


def test_padding_one_adaptive_pooling_and_nn_flatten_by_hand() -> None:
    # conv3 pad 1: 3 (28x28) | conv3 pad 1: 5 (28x28) | F.avg_pool2d 2: 6, jump 2, 14x14 | adaptive pool to 2x2:
    # windows of 7, 6 + 6*2 = 18, jump 14 | Flatten: 18 | Linear over the 2x2 map: 18 + 1*14 = 32 (more than the
    # image: padding lets the outer windows hang over its edge).
    rows = [r for r in _table(PaddedAdaptive()) if r.name != "relu"]
    assert [r.rf for r in rows] == [3, 5, 6, 18, 18, 32]
    assert [r.jump for r in rows] == [1, 1, 2, 14, None, None]
    assert rows[0].shape == rows[1].shape == (4, 28, 28)


def test_a_repeated_block_counts_its_weights_once_and_grows_the_field_each_time() -> None:
    # 28 -> conv3 26 -> conv3 24 -> pool 12 -> separable 10, then the last separable three times: 8, 6, 4.
    # RF: 3, 5, 6 (jump 2), 10, 14, 18, 22; global average pooling over 4x4: 22 + 3*2 = 28.
    from tinymnist.models.layers import final_rf_text

    model = create_model("tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3")
    rows = _table(model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters()) == 5_528
    depthwise = [r for r in rows if r.name.startswith("depthwise")]
    assert [r.rf for r in depthwise] == [10, 14, 18, 22]
    assert [r.params for r in depthwise] == [288, 288, 0, 0] and depthwise[-1].name.endswith("(again)")
    assert final_rf_text(rows) == "28x28 px"


def test_a_factorized_layer_is_oblong_between_its_halves() -> None:
    rows = _table(create_model("tiny:w=8.16.16.16,pool=2,fact=3"))
    half, whole = [r for r in rows if r.name.startswith(("conv 3x1", "conv 1x3"))]
    assert half.rf_hw == (10, 6) and half.rf_text == "10x6" and whole.rf_hw == (10, 10)


class Branches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 10, 3), torch.nn.Conv2d(10, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.mean() > 0:  # the path depends on the image
            x = torch.nn.functional.max_pool2d(x, 2)
        return self.head(x).mean((2, 3))


class Upsampling(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(self.conv(x), scale_factor=2)
        return x.mean((2, 3))


@pytest.mark.parametrize(("model", "why"), [(Branches(), "reads its input's values"),
                                            (Upsampling(), "interpolate, which the table does not model")])
def test_what_cannot_be_known_is_unknown(model: torch.nn.Module, why: str) -> None:
    from tinymnist.models.layers import final_rf_text
    from tinymnist.reports.render import layer_lines

    rows = _table(model)
    assert rows[-1].rf is None and rows[-1].rf_text == "unknown"
    assert final_rf_text(rows).startswith("unknown (") and why in final_rf_text(rows)
    assert "final receptive field unknown" in layer_lines(model)[-1]


class Unused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.spare = torch.nn.Conv2d(1, 10, 3), torch.nn.Linear(5, 5)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * self.scale).amax((2, 3))


def test_every_parameter_is_in_the_table_even_unused_ones() -> None:
    from tinymnist.models.layers import final_rf_text

    model = Unused()
    rows = _table(model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    assert rows[-1].name == "spare (never run by forward)" and not rows[-1].ran
    assert final_rf_text(rows).startswith("28x28")  # the unused row does not decide the field


@pytest.mark.parametrize("name", [*list_models(), "tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3",
                                  "tiny:w=8.16.16.16,pool=2,pad=2", "tiny:w=8.16.16.16,pool=2,fact=3",
                                  "tiny:w=8.16.16.16.16,pool=2,sq=8,pool2=4", "tiny:w=8.16.24.24,pool=2,sep=2,rep=2"])
def test_the_table_counts_each_parameter_once(name: str) -> None:
    model = create_model(name)
    assert sum(r.params for r in _table(model)) == sum(p.numel() for p in model.parameters()) == count_params(model)
