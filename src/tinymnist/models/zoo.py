"""Every built-in architecture, built from a few small blocks, each a function decorated with
``@register_model`` (or ``@register_family`` for a parametric family). Every built-in model maps
(N, 1, 28, 28) normalized images to (N, 10) log-probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from tinymnist.errors import UsageError
from tinymnist.models.registry import register_family, register_model


def conv(cin: int, cout: int, k: int, order: str = "cbr", padding: int = 0, bn_momentum: float = 0.1) -> nn.Sequential:
    """A bias-free convolution followed by the layers named in ``order`` after its leading 'c':
    'b' = BatchNorm, 'r' = ReLU; e.g. 'cbr' (Conv-BN-ReLU), 'crb' (Conv-ReLU-BN), 'cr', 'c'."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=padding, bias=False)]
    for code in order[1:]:
        layers.append(nn.BatchNorm2d(cout, momentum=bn_momentum) if code == "b" else nn.ReLU())
    return nn.Sequential(*layers)


class Net(nn.Sequential):
    """A plain stack of layers ending in log-probabilities over the ten digits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(super().forward(x).flatten(1), dim=1)


# --- The original four steps (exact layers, padding 0, no bias, no dropout) ---------------------


@register_model
def original_step1() -> nn.Module:
    """Set-up: 21,562 params; a 6x6 kernel reads the last 6x6 map to the 10 outputs."""
    return Net(
        conv(1, 10, 3, "cr"), conv(10, 16, 3, "cr"), nn.MaxPool2d(2), conv(16, 10, 1, "cr"),
        conv(10, 16, 3, "cr"), conv(16, 16, 3, "cr"), conv(16, 32, 3, "cr"), conv(32, 10, 6, "c"),
    )


@register_model
def original_step2() -> nn.Module:
    """GAP: 10,362 params; the 6x6 kernel replaced by global average pooling and a 1x1 head."""
    return Net(
        conv(1, 10, 3, "cr"), conv(10, 16, 3, "cr"), nn.MaxPool2d(2), conv(16, 10, 1, "cr"),
        conv(10, 16, 3, "cr"), conv(16, 16, 3, "cr"), conv(16, 32, 3, "cr"),
        nn.AvgPool2d(6), conv(32, 10, 1, "c"),
    )


def _original_bn(order: str) -> nn.Module:
    return Net(
        conv(1, 10, 3, order), conv(10, 16, 3, order), nn.MaxPool2d(2), conv(16, 10, 1, order),
        conv(10, 16, 3, order), conv(16, 16, 3, order), conv(16, 16, 3, order),
        nn.AvgPool2d(6), conv(16, 10, 1, "c"),
    )


@register_model
def original_step3() -> nn.Module:
    """BatchNorm (Conv-BN-ReLU), last block cut to 16 channels: 8,066 params."""
    return _original_bn("cbr")


@register_model
def original_step4() -> nn.Module:
    """Same layers as step 3 ordered Conv-ReLU-BN, as the original notebook had them: 8,066 params."""
    return _original_bn("crb")


# --- tinymnist's own designs ------------------------------------------------------------------------------

BN_MOMENTUM = 0.01  # running statistics over ~100 batches: steadier evaluation for narrow layers


def cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv-BN-ReLU as every layer of tinymnist's own designs has it (BatchNorm momentum BN_MOMENTUM)."""
    return conv(cin, cout, k, bn_momentum=BN_MOMENTUM)


def compact_net(c1: int, c2: int, squeeze: int, c3: int, c4: int, c5: int) -> nn.Module:
    """The original's padding-0 ('valid') shape: 28 -> 26 -> 24, max-pool to 12, a 1x1 squeeze, 10 -> 8 -> 6,
    global average pooling and a 1x1 head, with Conv-BN-ReLU everywhere. The maps shrink at every layer, so
    it is cheap on a CPU; channel counts are multiples of 8, which oneDNN's CPU kernels vectorize best (10 or
    12 channels train markedly slower per parameter). BatchNorm's running statistics average over about 100
    batches (momentum 0.01, not 0.1): with 8-16 channels and augmented batches of 64, an average over 10
    batches made the test accuracy jitter by several images from one epoch to the next."""
    return Net(
        cbr(1, c1, 3), cbr(c1, c2, 3), nn.MaxPool2d(2), cbr(c2, squeeze, 1),
        cbr(squeeze, c3, 3), cbr(c3, c4, 3), cbr(c4, c5, 3), nn.AdaptiveAvgPool2d(1), conv(c5, 10, 1, "c"),
    )


@register_model
def compact_8k7() -> nn.Module:
    """8,672 params: 16-channel layers, an 8-channel squeeze."""
    return compact_net(16, 16, 8, 16, 16, 16)


@register_model
def compact_7k4() -> nn.Module:
    """7,432 params: compact_8k7 with 8 channels in its first layer."""
    return compact_net(8, 16, 8, 16, 16, 16)


def separable(cin: int, cout: int, padding: int = 0) -> nn.Sequential:
    """A depthwise 3x3 convolution (one 3x3 filter per input channel) and a pointwise 1x1 mixing the channels,
    then BN-ReLU: 9*cin + cin*cout weights where a full 3x3 convolution has 9*cin*cout."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=padding, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=BN_MOMENTUM), nn.ReLU())


def factorized(cin: int, cout: int, padding: int = 0) -> nn.Sequential:
    """A 3x1 convolution keeping ``cin`` channels, then a 1x3 one to ``cout``, then BN-ReLU: the 3x3 window of a
    plain layer for 9*cin*cin/3 + 3*cin*cout weights instead of 9*cin*cout."""
    return nn.Sequential(nn.Conv2d(cin, cin, (3, 1), padding=(padding, 0), bias=False),
                         nn.Conv2d(cin, cout, (1, 3), padding=(0, padding), bias=False),
                         nn.BatchNorm2d(cout, momentum=BN_MOMENTUM), nn.ReLU())


class Repeat(nn.Module):
    """One block applied ``times`` times in a row with the same weights (its parameters exist, and count, once);
    with ``own_norms``, each application after the first normalizes with BatchNorms of its own (their statistics
    differ from one depth to the next), sharing every other weight."""

    def __init__(self, block: nn.Sequential, times: int, own_norms: bool = False) -> None:
        super().__init__()
        self.block, self.times = block, times
        norms = [m for m in block if isinstance(m, nn.BatchNorm2d)] if own_norms else []
        self.norms = nn.ModuleList(nn.BatchNorm2d(n.num_features, momentum=n.momentum)
                                   for _ in range(times - 1) for n in norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        for i in range(self.times - 1):
            if not self.norms:
                x = self.block(x)
                continue
            for m in self.block:
                x = self.norms[i](x) if isinstance(m, nn.BatchNorm2d) else m(x)
        return x


@register_model
def sep_3k8() -> nn.Module:
    """3,768 params: compact_net's first two layers and max-pool, then three depthwise-separable layers
    (16 -> 24 -> 24 -> 24 channels, 12 -> 10 -> 8 -> 6) where compact_3k8 has plain 3x3 convolutions of 8-16
    channels: for the same parameters the last layers are 24 wide, and global average pooling hands the head
    24 features instead of 8."""
    return Net(cbr(1, 8, 3), cbr(8, 16, 3), nn.MaxPool2d(2),
               separable(16, 24), separable(24, 24), separable(24, 24), nn.AdaptiveAvgPool2d(1),
               conv(24, 10, 1, "c"))


@register_model
def sep_2k8() -> nn.Module:
    """2,816 params: sep_3k8 with its second layer depthwise-separable too (8 -> 16 channels for 232 weights
    instead of 1,184)."""
    return Net(cbr(1, 8, 3), separable(8, 16), nn.MaxPool2d(2),
               separable(16, 24), separable(24, 24), separable(24, 24), nn.AdaptiveAvgPool2d(1),
               conv(24, 10, 1, "c"))


@register_model
def compact_3k8() -> nn.Module:
    """3,784 params: 8 channels everywhere but one 16-channel layer at 8x8."""
    return compact_net(8, 8, 8, 8, 16, 8)



@register_family
def tiny(w: str, pool: int = 2, sep: int = 99, sq: int = 0, pool2: int = 0, pad: int = 0, rep: int = 1,
         repbn: int = 0, fact: int = 0) -> nn.Module:
    """The family every design above belongs to, by its arguments: 3x3 padding-0 layers of widths ``w``
    (dot-separated, e.g. ``8.16.24.24.24``), a 2x2 max-pool after layer ``pool``, a 1x1 squeeze to ``sq``
    channels after the pool (0: none), a second 2x2 max-pool after layer ``pool2`` (0: none; after ``pool``),
    layers from number ``sep`` on depthwise-separable (the first layer is always plain), then global average
    pooling and a 1x1 head. The levers of small public models: the first ``pad`` layers keep their map size
    (padding 1), the last layer is applied ``rep`` times with shared weights (its input width must be its
    output width; ``repbn=1``: each application with BatchNorms of its own), layer number ``fact`` (a plain
    one) is factorized into 3x1 and 1x3 convolutions.
    ``tiny:w=8.16.24.24.24,pool=2,sep=2`` is sep_2k8, ``tiny:w=8.16.16.16.16,pool=2,sq=8`` is compact_7k4."""
    try:
        widths = [int(x) for x in str(w).split(".")]
    except ValueError:
        raise UsageError(f"tiny: w={w} must be whole numbers joined by dots, like w=8.16.24.") from None
    if not widths or min(widths) < 1 or not 1 <= pool <= len(widths) or sq < 0 or \
            (pool2 and not pool < pool2 <= len(widths)):
        raise UsageError(f"tiny: w={w}, pool={pool}, sq={sq}, pool2={pool2}: needs at least one width, every width "
                         f">= 1, the pool after one of the layers, sq >= 0, and a second pool (if any) after a "
                         f"later layer.")
    last_in = (sq if sq and pool == len(widths) - 1 else widths[-2]) if len(widths) > 1 else 1
    if pad < 0 or rep < 1 or (rep > 1 and last_in != widths[-1]) or not (fact == 0 or 2 <= fact < sep):
        raise UsageError(f"tiny: pad={pad}, rep={rep}, fact={fact}: pad >= 0; rep >= 1, and above 1 only when the "
                         f"last layer keeps its width; fact names a plain layer after the first (0: none).")
    if not tiny_fits(len(widths), pool, pool2, pad, rep):
        raise UsageError(f"tiny: {len(widths)} layers with pools after layer {pool}"
                         f"{f' and {pool2}' if pool2 else ''} leave no image (28 pixels lose 2 per padding-0 "
                         f"layer and half at a pool); use fewer layers.")
    layers: list[nn.Module] = []
    cin = 1
    for i, cout in enumerate(widths, 1):
        padding = 1 if i <= pad else 0
        if i == fact:
            layer = factorized(cin, cout, padding)
        elif i >= max(sep, 2):
            layer = separable(cin, cout, padding)
        else:
            layer = conv(cin, cout, 3, padding=padding, bn_momentum=BN_MOMENTUM)
        layers.append(Repeat(layer, rep, bool(repbn)) if i == len(widths) and rep > 1 else layer)
        cin = cout
        if i == pool:
            layers.append(nn.MaxPool2d(2))
            if sq:
                layers.append(cbr(cin, sq, 1))
                cin = sq
        if i == pool2:
            layers.append(nn.MaxPool2d(2))
    return Net(*layers, nn.AdaptiveAvgPool2d(1), conv(cin, 10, 1, "c"))


def tiny_fits(layers: int, pool: int, pool2: int = 0, pad: int = 0, rep: int = 1) -> bool:
    """Whether ``layers`` 3x3 layers (the first ``pad`` of them padding 1, the last applied ``rep`` times) with
    max-pools after ``pool`` (and ``pool2``) leave an image."""
    if pool2 > layers:
        return False
    side = 28
    for i in range(1, layers + 1):
        side -= 0 if i <= pad else 2 * (rep if i == layers else 1)
        if side < 1:
            return False
        if i in (pool, pool2):
            side //= 2
    return side >= 1


def tiny_params(w: str, pool: int = 2, sep: int = 99, sq: int = 0, pool2: int = 0) -> int:  # a pool has no weights
    """The parameter count of ``tiny(w, pool, sep, sq)`` without building it (the search's initial design weighs
    every layout against a budget): a 3x3 convolution has 9 x in x out weights, a separable layer 9 x in +
    in x out, a 1x1 squeeze in x out, each BatchNorm 2 per channel; the head has 10 x in."""
    widths, total, cin = [int(x) for x in str(w).split(".")], 0, 1
    for i, cout in enumerate(widths, 1):
        total += (9 * cin + cin * cout if i >= max(sep, 2) else 9 * cin * cout) + 2 * cout
        cin = cout
        if i == pool and sq:
            total += cin * sq + 2 * sq
            cin = sq
    return total + 10 * cin

