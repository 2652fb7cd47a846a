"""Per-layer table of a model: output shape, parameters, receptive field and jump, computed by running the model
once on a blank image and following every torch function it calls (a ``TorchFunctionMode``), never typed.

Following functions, not only modules, is what makes the figures honest for plain PyTorch: ``F.max_pool2d`` in a
forward doubles the jump like ``nn.MaxPool2d`` does, and a Linear over a flattened map sees the union of the map's
receptive fields. An operation whose effect on the receptive field is not modelled here (and a forward that reads
its input's values to decide what to do) makes the figure "unknown" from there on, never a guess."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tinymnist.models.trace import REDUCE, Axis, Geo, Unknown, _arg, _tensors, _Tracer


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]  # output, without the batch: (C, H, W) for a map, (F,) for a vector
    params: int  # parameters this row adds; a module applied again with the same weights adds none
    rf_hw: tuple[int, int] | None  # receptive field (height, width) in input pixels; None: unknown
    jump_hw: tuple[int, int] | None  # input pixels between neighbouring outputs; None: unknown, or not a map
    why: str = ""  # why the receptive field is unknown from this row on
    ran: bool = True  # False: a module the forward never calls (its parameters still count)

    @property
    def rf(self) -> int | None:
        """The side of the receptive field (the larger one where a 3x1 kernel left it oblong); None: unknown."""
        return max(self.rf_hw) if self.rf_hw else None

    @property
    def jump(self) -> int | None:
        return max(self.jump_hw) if self.jump_hw else None

    @property
    def rf_text(self) -> str:
        return _hw_text(self.rf_hw, "unknown")

    @property
    def jump_text(self) -> str:
        return _hw_text(self.jump_hw, "-" if self.rf_hw else "unknown")


def _hw_text(hw: tuple[int, int] | None, missing: str) -> str:
    if hw is None:
        return missing
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def final_rf_text(rows: list[Layer]) -> str:
    """'28x28 px', or 'unknown (why)'."""
    last = next((r for r in reversed(rows) if r.ran), None)
    if last is None or last.rf_hw is None:
        why = next((r.why for r in rows if r.why), "")
        return f"unknown ({why})" if why else "unknown"
    return f"{last.rf_hw[0]}x{last.rf_hw[1]} px"


class _Table:
    """The rows, as modules finish and as functions outside any module run."""

    def __init__(self, model: nn.Module) -> None:
        self.rows: list[Layer] = []
        self.depth = 0  # >0 while inside a leaf module: its functions make no rows of their own
        self.counted: set[int] = set()  # parameters already in a row
        self.called: set[int] = set()
        self.parameters = {id(p) for p in model.parameters()}
        self.reads_values = ""
        self.tracer: _Tracer | None = None

    def new_params(self, tensors: Iterator[torch.Tensor]) -> int:
        total = 0
        for p in tensors:
            if id(p) in self.parameters and id(p) not in self.counted:
                self.counted.add(id(p))
                total += p.numel()
        return total

    def add(self, name: str, out: torch.Tensor, geo: Geo | Unknown, params: int) -> None:
        if isinstance(geo, Unknown):
            rf, jump, why = None, None, str(geo)
            if any(r.why == why for r in self.rows):
                why = ""
        else:
            rf = (geo.h.r, geo.w.r)
            jump = (geo.h.j, geo.w.j) if geo.is_map else None
            why = ""
        self.rows.append(Layer(name, tuple(out.shape[1:]), params, rf, jump, why))

    def op(self, name: str, args: tuple, kwargs: dict, x: torch.Tensor, out: torch.Tensor, before: Geo | Unknown,
           geo: Geo | Unknown) -> None:
        """A function outside any module makes a row when it changes the geometry (or loses it)."""
        if self.depth:
            return
        params = self.new_params(_tensors((args, kwargs)))
        lost = isinstance(geo, Unknown) and not isinstance(before, Unknown)
        changed = isinstance(geo, Geo) and isinstance(before, Geo) and (  # a 1x1 map flattened changes nothing
            geo.h != before.h or geo.w != before.w or (geo != before and before.h.n * before.w.n > 1))
        if lost or changed or params:
            self.add(_describe_op(name, args, kwargs, x), out, geo, params)

    def module_start(self, m: nn.Module) -> None:
        self.depth += 1

    def module_end(self, m: nn.Module, out: object) -> None:
        self.depth -= 1
        again = id(m) in self.called
        self.called.add(id(m))
        params = self.new_params(m.parameters())
        t = next(_tensors(out), None)
        if t is None or self.tracer is None or id(t) not in self.tracer.geo:
            return
        self.add(_describe(m) + (" (again)" if again else ""), t, self.tracer.geo[id(t)], params)


def _pair(v: int | tuple[int, int]) -> str:
    if isinstance(v, tuple):
        return str(v[0]) if len(set(v)) == 1 else "x".join(str(x) for x in v)
    return str(v)


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size
        extra = ""
        if isinstance(m.padding, str) or any(m.padding):
            extra += f", pad {_pair(m.padding) if not isinstance(m.padding, str) else m.padding}"
        extra += f", stride {_pair(m.stride)}" if any(s != 1 for s in m.stride) else ""
        extra += f", dilation {_pair(m.dilation)}" if any(d != 1 for d in m.dilation) else ""
        kind = "depthwise" if m.groups == m.in_channels > 1 else "conv"
        return f"{kind} {k[0]}x{k[1]} {m.in_channels}->{m.out_channels}{extra}"
    if isinstance(m, nn.MaxPool2d):
        return f"maxpool {_pair(m.kernel_size)}"
    if isinstance(m, nn.AvgPool2d):
        return f"avgpool {_pair(m.kernel_size)}"
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return "global avgpool" if m.output_size in (1, (1, 1)) else f"adaptive pool to {_pair(m.output_size)}"
    if isinstance(m, nn.BatchNorm2d):
        return "batchnorm"
    if isinstance(m, nn.Linear):
        return f"linear {m.in_features}->{m.out_features}"
    return type(m).__name__.lower()


def _describe_op(name: str, args: tuple, kwargs: dict, x: torch.Tensor) -> str:
    """A function call as a row name, marked (F) as the forward wrote it."""
    if name in ("max_pool2d", "avg_pool2d"):
        return f"{name[:3]}pool {_pair(_arg(args, kwargs, 1, 'kernel_size'))} (F)"
    if name in ("view", "reshape", "flatten"):
        return f"flatten ({name})"
    if name in REDUCE:
        return f"{name} (global)" if x.ndim == 4 else name
    return f"{name} (F)"


def layer_table(model: nn.Module) -> list[Layer]:
    """Every leaf module and every function outside one that changes what the outputs see, in the order the
    forward runs them: output shape, parameters (each counted once, however often its module runs), receptive
    field and jump. Parameters of modules the forward never calls come last, on rows of their own."""
    table = _Table(model)
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [h for m in leaves for h in (m.register_forward_pre_hook(lambda mod, inp: table.module_start(mod)),
                                         m.register_forward_hook(lambda mod, inp, out: table.module_end(mod, out)))]
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    try:
        with torch.no_grad(), _Tracer(table) as tracer:
            table.tracer = tracer
            tracer.track(x, Geo(Axis(0, 1, 1, 28), Axis(0, 1, 1, 28)))
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = table.rows
    if table.reads_values:
        why = f"the forward reads its input's values ({table.reads_values}), so its path can change with the image"
        rows = [replace(r, rf_hw=None, jump_hw=None, why="") for r in rows]
        if rows:
            rows[-1] = replace(rows[-1], why=why)
    for name, m in model.named_modules():  # defined but never run: their parameters still count
        rest = sum(p.numel() for p in m.parameters(recurse=False) if id(p) not in table.counted)
        if rest:
            table.counted.update(id(p) for p in m.parameters(recurse=False))
            rows.append(Layer(f"{name or 'model'} (never run by forward)", (), rest, None, None, ran=False))
    return rows


def flops_per_image(model: nn.Module) -> int:
    """Inference FLOPs for one 28x28 image (a multiply-add counts as two)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return int(counter.get_total_flops())

