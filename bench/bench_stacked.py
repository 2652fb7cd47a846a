"""An experiment for training several seeds in one process (issue 23; not in the engine yet): K models of one
architecture stacked into one with grouped convolutions. Model m owns the m-th block of channels of every layer,
so each convolution group is one model's and BatchNorm's per-channel statistics stay per model. The script
checks that the stacked model gives each model's own outputs, then times one SGD step of the K stacked models
(channels_last and NCHW) against one step of a single model, interleaved.

    python bench/bench_stacked.py MODEL K BATCH THREADS     # e.g. compact_7k4 4 64 1

Prints what it measures; writes nothing.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from tinymnist.models import create_model

SHAPELESS = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d)


def stacked_layer(layers: list[nn.Module]) -> nn.Module:
    """One layer holding the same layer of every model, model-major along the channels."""
    first, k = layers[0], len(layers)
    if isinstance(first, nn.Conv2d):
        conv = nn.Conv2d(first.in_channels * k, first.out_channels * k, first.kernel_size, first.stride,
                         first.padding, first.dilation, first.groups * k, bias=first.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([c.weight for c in layers]))
            if first.bias is not None:
                conv.bias.copy_(torch.cat([c.bias for c in layers]))
        return conv
    if isinstance(first, nn.BatchNorm2d):
        bn = nn.BatchNorm2d(first.num_features * k, eps=first.eps, momentum=first.momentum)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(torch.cat([getattr(b, name) for b in layers]))
        return bn
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*[stacked_layer([s[i] for s in layers]) for i in range(len(first))])
    if isinstance(first, SHAPELESS):
        return copy.deepcopy(first)
    raise TypeError(f"cannot stack a {type(first).__name__}")


class Stacked(nn.Module):
    """K models as one: (B, K, 28, 28) images (model m reads channel m) -> (B, K, 10) log-probabilities."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.k = len(models)
        self.body = nn.Sequential(*[stacked_layer([m[i] for m in models]) for i in range(len(models[0]))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.body(x).flatten(1).view(x.shape[0], self.k, -1), -1)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 50) -> Callable[[], float]:
    """A function timing ``steps`` SGD steps of ``model`` on (x, y); seconds per step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        out = model(x)
        loss = sum(nn.functional.nll_loss(out[:, i], y[i]) for i in range(y.shape[0])) if out.dim() == 3 \
            else nn.functional.nll_loss(out, y[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    return timed


def main() -> None:
    name, k, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(create_model(name))
    x, y = torch.randn(batch, k, 28, 28), torch.randint(0, 10, (k, batch))
    stacked = Stacked(models).eval()
    with torch.no_grad():
        each = torch.stack([m.eval()(x[:, i:i + 1]) for i, m in enumerate(models)], 1)
        print(f"largest difference from the models' own outputs: {(stacked(x) - each).abs().max().item():.1e}")
    cl = torch.channels_last
    timers = {"one model, channels_last": step_time(copy.deepcopy(models[0]).train().to(memory_format=cl),
                                                   x[:, :1].contiguous(memory_format=cl), y[:1]),
              f"{k} stacked, channels_last": step_time(Stacked(models).train().to(memory_format=cl),
                                                      x.contiguous(memory_format=cl), y),
              f"{k} stacked, NCHW": step_time(Stacked(models).train(), x, y)}
    times: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(3):  # interleaved repeats
        for label, timed in timers.items():
            times[label].append(timed())
    for label, ts in times.items():
        per = statistics.median(ts) * 1000
        seeds = k if "stacked" in label else 1
        print(f"{name} batch {batch}, {threads} thread(s), {label}: {per:.2f} ms per step, "
              f"{per / seeds:.2f} ms per seed-step (median of 3)")


if __name__ == "__main__":
    main()
