"""Per-layer table of a model: output shape, parameters, receptive field and jump, computed by walking the
layers (forward hooks on a dummy image), never typed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]  # output (C, H, W)
    params: int
    rf: int  # receptive field, in input pixels
    jump: int  # distance in input pixels between neighbouring outputs (the product of strides)


def _pair(v: int | tuple[int, int]) -> int:
    return v[0] if isinstance(v, tuple) else v


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = _pair(m.kernel_size)
        pad = f", pad {_pair(m.padding)}" if _pair(m.padding) else ""
        kind = "depthwise" if m.groups == m.in_channels > 1 else "conv"
        return f"{kind} {k}x{k} {m.in_channels}->{m.out_channels}{pad}"
    if isinstance(m, nn.MaxPool2d):
        return f"maxpool {_pair(m.kernel_size)}"
    if isinstance(m, nn.AvgPool2d):
        return f"avgpool {_pair(m.kernel_size)}"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "global avgpool"
    if isinstance(m, nn.BatchNorm2d):
        return "batchnorm"
    return type(m).__name__.lower()


def layer_table(model: nn.Module) -> list[Layer]:
    """Every leaf layer in order, with its output shape, parameters, receptive field and jump."""
    leaves = [m for m in model.modules() if not list(m.children())]
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.__setitem__(id(mod), (inp[0].shape, out.shape)))
             for m in leaves]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    rows, rf, jump = [], 1, 1
    for m in leaves:
        in_shape, out_shape = shapes[id(m)]
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            k, s = _pair(m.kernel_size), _pair(m.stride)
        elif isinstance(m, nn.AdaptiveAvgPool2d):  # one window over the whole map
            k, s = in_shape[-1], in_shape[-1]
        else:
            k, s = 1, 1
        rf, jump = rf + (k - 1) * jump, jump * s
        rows.append(Layer(_describe(m), tuple(out_shape[1:]), sum(p.numel() for p in m.parameters()), rf, jump))
    return rows


def flops_per_image(model: nn.Module) -> int:
    """Inference FLOPs for one 28x28 image (a multiply-add counts as two)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return int(counter.get_total_flops())
