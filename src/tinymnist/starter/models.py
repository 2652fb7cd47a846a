"""The original exercise's four networks in plain PyTorch: edit them, or add your own.

Each class builds with no arguments and maps a batch of (N, 1, 28, 28) images to (N, 10) logits (tinymnist
applies log_softmax; returning log-probabilities is fine too). Keep everything in this one file: a run keeps
a copy of it, so the run can be reloaded after you change the file.
"""

from torch import nn


def block(cin, cout, k, order="cr"):
    """A bias-free convolution, then ReLU ('r') and/or BatchNorm ('b') in the order given."""
    layers = [nn.Conv2d(cin, cout, k, bias=False)]
    for code in order[1:]:
        layers.append(nn.BatchNorm2d(cout) if code == "b" else nn.ReLU())
    return nn.Sequential(*layers)


class Step1(nn.Module):
    """Set-up: 21,562 params; a 6x6 kernel reads the last 6x6 map."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            block(1, 10, 3), block(10, 16, 3), nn.MaxPool2d(2), block(16, 10, 1),  # 28 -> 26 -> 24 -> 12
            block(10, 16, 3), block(16, 16, 3), block(16, 32, 3), block(32, 10, 6, "c"),  # 12 -> 10 -> 8 -> 6 -> 1
        )

    def forward(self, x):
        return self.layers(x).flatten(1)


class Step2(nn.Module):
    """Global average pooling and a 1x1 head instead of the 6x6 kernel: 10,362 params."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            block(1, 10, 3), block(10, 16, 3), nn.MaxPool2d(2), block(16, 10, 1),
            block(10, 16, 3), block(16, 16, 3), block(16, 32, 3), nn.AvgPool2d(6), block(32, 10, 1, "c"),
        )

    def forward(self, x):
        return self.layers(x).flatten(1)


class Step3(nn.Module):
    """BatchNorm after every convolution, the last block cut to 16 channels: 8,066 params."""

    order = "cbr"  # Conv-BN-ReLU

    def __init__(self):
        super().__init__()
        o = self.order
        self.layers = nn.Sequential(
            block(1, 10, 3, o), block(10, 16, 3, o), nn.MaxPool2d(2), block(16, 10, 1, o),
            block(10, 16, 3, o), block(16, 16, 3, o), block(16, 16, 3, o), nn.AvgPool2d(6), block(16, 10, 1, "c"),
        )

    def forward(self, x):
        return self.layers(x).flatten(1)


class Step4(Step3):
    """Step 3's layers ordered Conv-ReLU-BN, as the original notebook had them (the LR schedule is in the
    journey file)."""

    order = "crb"
