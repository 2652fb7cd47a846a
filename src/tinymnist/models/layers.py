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
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


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


# --- geometry: where each output element looks in the input ----------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One spatial axis (height or width): output position i sees input pixels [a + i*j, a + i*j + r); ``n``
    positions. In a vector (a map flattened into features) ``n`` positions wait to be mixed: an operation over
    the features (a Linear, a softmax, a mean) sees all of them, that is r + (n - 1) * j pixels."""
    a: int
    r: int
    j: int
    n: int

    def union(self) -> Axis:
        return Axis(self.a, self.r + (self.n - 1) * self.j, self.j * self.n, 1)


@dataclass(frozen=True)
class Geo:
    h: Axis
    w: Axis
    vector_dim: int | None = None  # None: a (N, C, H, W) map; else the dimension holding the flattened map

    @property
    def is_map(self) -> bool:
        return self.vector_dim is None

    def mixed(self) -> Geo:
        return replace(self, h=self.h.union(), w=self.w.union())


class Unknown(Exception):
    """The receptive field cannot be followed through an operation; the message says which and why."""


def _ints(v: object, default: int = 1) -> tuple[int, int]:
    if v is None or (isinstance(v, list | tuple) and len(v) == 0):
        return default, default
    if isinstance(v, int):
        return v, v
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: object = None) -> object:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _window(geo: Geo, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int],
            out: torch.Tensor) -> Geo:
    """A sliding window (convolution or pooling) of kernel ``k``, stride ``s``, padding ``p``, dilation ``d``."""
    if not geo.is_map:
        raise Unknown("a sliding window over a flattened map")
    axes = [Axis(ax.a - pi * ax.j, ax.r + (ki - 1) * di * ax.j, ax.j * si, n)
            for ax, ki, si, pi, di, n in zip((geo.h, geo.w), k, s, p, d, out.shape[-2:], strict=True)]
    return Geo(*axes)


def _conv(geo: Geo, args: tuple, kwargs: dict, out: torch.Tensor) -> Geo:
    weight = _arg(args, kwargs, 1, "weight")
    k = tuple(weight.shape[-2:])
    d = _ints(_arg(args, kwargs, 5, "dilation", 1))
    padding = _arg(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        p = (0, 0)
    elif padding == "same":
        p = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))
    else:
        p = _ints(padding, 0)
    return _window(geo, k, _ints(_arg(args, kwargs, 3, "stride", 1)), p, d, out)


def _pool(geo: Geo, args: tuple, kwargs: dict, out: torch.Tensor, dilated: bool) -> Geo:
    k = _ints(_arg(args, kwargs, 1, "kernel_size"))
    s = _ints(_arg(args, kwargs, 2, "stride"), 0)
    s = k if s == (0, 0) else s
    d = _ints(_arg(args, kwargs, 4, "dilation", 1)) if dilated else (1, 1)
    return _window(geo, k, s, _ints(_arg(args, kwargs, 3, "padding", 0), 0), d, out)


def _adaptive(geo: Geo, x: torch.Tensor, out: torch.Tensor) -> Geo:
    if not geo.is_map:
        raise Unknown("adaptive pooling of a flattened map")
    axes = []
    for ax, n_in, n_out in zip((geo.h, geo.w), x.shape[-2:], out.shape[-2:], strict=True):
        if n_in % n_out:  # windows of unequal sizes: no one receptive field
            raise Unknown(f"adaptive pooling from {n_in} to {n_out} positions, which does not divide evenly")
        k = n_in // n_out
        axes.append(Axis(ax.a, ax.r + (k - 1) * ax.j, ax.j * k, n_out))
    return Geo(*axes)


def _dims(v: object, ndim: int) -> set[int] | None:
    """The dimensions a reduction names (None: all of them)."""
    if v is None:
        return None
    return {d % ndim for d in ([v] if isinstance(v, int) else v)}


def _reduce(geo: Geo, x: torch.Tensor, out: torch.Tensor, dims: set[int] | None) -> Geo:
    """A mean, sum or max over ``dims`` of ``x`` (None: every dimension)."""
    dims = set(range(x.ndim)) if dims is None else dims
    if geo.is_map:
        spatial = dims & {x.ndim - 2, x.ndim - 1}
        h, w = (geo.h.union() if x.ndim - 2 in spatial else geo.h), (geo.w.union() if x.ndim - 1 in spatial else geo.w)
        if out.ndim == x.ndim:  # keepdim
            return Geo(h, w)
        if spatial != {x.ndim - 2, x.ndim - 1}:
            raise Unknown("a reduction that drops one spatial dimension of a map")
        if 1 in dims:  # the channels went too: a scalar per image, or less
            return Geo(h, w, max(out.ndim - 1, 0))
        return Geo(h, w, out.ndim - 1)
    if geo.vector_dim in dims:
        geo = geo.mixed()
        return replace(geo, vector_dim=min(geo.vector_dim, max(out.ndim - 1, 0)))
    return replace(geo, vector_dim=geo.vector_dim - sum(1 for d in dims if d < geo.vector_dim)
                   if out.ndim < x.ndim else geo.vector_dim)


def _reshape(geo: Geo, x: torch.Tensor, out: torch.Tensor) -> Geo:
    """view / reshape / flatten / squeeze / unsqueeze: where the map's positions land."""
    if tuple(out.shape) == tuple(x.shape):
        return geo
    pending = geo.h.n * geo.w.n
    if pending == 1:  # a 1x1 map: any shape of it is the same features
        return Geo(geo.h, geo.w, None if out.ndim == 4 else max(out.ndim - 1, 0))
    if geo.is_map and out.ndim == 4 and tuple(out.shape[-2:]) == tuple(x.shape[-2:]):
        return geo
    if geo.is_map and out.ndim >= 1 and out.shape[-1] % pending == 0 and out.ndim < 4:
        return Geo(geo.h, geo.w, out.ndim - 1)  # the positions are (part of) the last dimension
    if not geo.is_map and geo.vector_dim == x.ndim - 1 and out.ndim >= 1 and out.shape[-1] % (
            x.shape[-1]) == 0 and out.ndim < 4:
        return Geo(geo.h, geo.w, out.ndim - 1)
    raise Unknown(f"a reshape from {tuple(x.shape[1:])} to {tuple(out.shape[1:])} that the table does not follow")


def _combine(geos: list[Geo], out: torch.Tensor) -> Geo:
    """An elementwise operation of several tensors derived from the image (a residual sum, a gate)."""
    first = geos[0]
    if all(g == first for g in geos):
        return first
    if any(g.vector_dim != first.vector_dim for g in geos):
        raise Unknown("an elementwise operation between a map and a vector")
    axes = []
    for name in ("h", "w"):
        xs = [getattr(g, name) for g in geos]
        wide = [ax for ax in xs if ax.n > 1]
        if len({(ax.j, ax.n) for ax in wide}) > 1:
            raise Unknown("an elementwise operation between maps of different jumps or sizes")
        if wide:
            lo = min(ax.a for ax in wide)
            hi = max(ax.a + ax.r for ax in wide)
            for ax in xs:  # a broadcast 1-position tensor: its one window must hold every other window
                if ax.n == 1 and not (ax.a <= lo and ax.a + ax.r >= hi + (wide[0].n - 1) * wide[0].j):
                    raise Unknown("a broadcast elementwise operation whose windows differ by position")
            narrow = [ax for ax in xs if ax.n == 1]
            if narrow:
                big = max(narrow, key=lambda ax: ax.r)
                axes.append(Axis(big.a, big.r, wide[0].j, wide[0].n))
            else:
                axes.append(Axis(lo, hi - lo, wide[0].j, wide[0].n))
        else:
            lo, hi = min(ax.a for ax in xs), max(ax.a + ax.r for ax in xs)
            axes.append(Axis(lo, hi - lo, max(ax.j for ax in xs), 1))
    return Geo(*axes, first.vector_dim)


# Operations that act on each element alone (or per channel, as BatchNorm in evaluation): the geometry passes.
ELEMENTWISE = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "gelu", "silu", "mish",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "softplus",
    "prelu", "rrelu", "threshold", "dropout", "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout",
    "batch_norm", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "pow", "clamp", "clamp_", "clip",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "where", "lt", "le", "gt",
    "ge", "eq", "ne", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
    "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__neg__", "__pos__", "__pow__", "__gt__", "__lt__",
    "__ge__", "__le__", "__eq__", "__ne__", "contiguous", "clone", "detach", "float", "double", "half", "bfloat16",
    "to", "type", "type_as", "requires_grad_", "masked_fill", "nan_to_num",
}
SOFTMAX = {"softmax", "log_softmax", "_softmax", "_log_softmax"}
REDUCE = {"mean", "sum", "amax", "amin", "logsumexp", "std", "var", "prod", "nansum", "nanmean", "max", "min"}
RESHAPE = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"}
# Reading an image's values to decide what to do: the path taken can change with the image.
READS_VALUES = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "nonzero"}


def _tensors(values: object) -> Iterator[torch.Tensor]:
    if isinstance(values, torch.Tensor):
        yield values
    elif isinstance(values, list | tuple):
        for v in values:
            yield from _tensors(v)
    elif isinstance(values, dict):
        for v in values.values():
            yield from _tensors(v)


class _Tracer(TorchFunctionMode):
    """Follows the image through every torch function: ``geo`` maps a tensor derived from it to its geometry
    (a Geo, or the Unknown that stopped it)."""

    def __init__(self, table: _Table) -> None:
        super().__init__()
        self.table = table
        self.geo: dict[int, Geo | Unknown] = {}
        self.keep: list[torch.Tensor] = []  # alive for the whole forward, so no id is reused

    def track(self, t: torch.Tensor, geo: Geo | Unknown) -> None:
        self.geo[id(t)] = geo
        self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        inputs = [t for t in _tensors((args, kwargs)) if id(t) in self.geo]
        if not inputs:
            return out
        if name in READS_VALUES:
            self.table.reads_values = name
            return out
        outputs = list(_tensors(out))
        if not outputs:
            return out
        known = [self.geo[id(t)] for t in inputs]
        stop = next((g for g in known if isinstance(g, Unknown)), None)
        try:
            geo = stop if stop is not None else self.propagate(name, args, kwargs, inputs, known, outputs[0])
        except Unknown as e:
            geo = e
        except Exception as e:  # an argument this table reads differently from torch: unknown, never a guess
            geo = Unknown(f"{name} with arguments the table does not read ({type(e).__name__})")
        for t in outputs:
            self.track(t, geo)
        self.table.op(name, args, kwargs, inputs[0], outputs[0], known[0], geo)
        return out

    def propagate(self, name: str, args: tuple, kwargs: dict, inputs: list[torch.Tensor], known: list[Geo],
                  out: torch.Tensor) -> Geo:
        x, geo = inputs[0], known[0]
        if name in ELEMENTWISE:
            return _combine(known, out)
        if name == "conv2d":
            return _conv(geo, args, kwargs, out)
        if name in ("max_pool2d", "avg_pool2d"):
            return _pool(geo, args, kwargs, out, name == "max_pool2d")
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            return _adaptive(geo, x, out)
        if name in ("linear", "matmul", "mm", "addmm", "__matmul__"):
            if name == "addmm":
                x, geo = (inputs[1], known[1]) if len(inputs) > 1 else (x, geo)
            if geo.is_map:
                raise Unknown(f"{name} over the rows of a map")
            return geo.mixed() if geo.vector_dim == x.ndim - 1 else geo
        if name in SOFTMAX:
            dim = _arg(args, kwargs, 1, "dim")
            dims = _dims(dim, x.ndim)
            if geo.is_map:
                if dims and dims & {x.ndim - 2, x.ndim - 1}:
                    return geo.mixed()
                return geo
            return geo.mixed() if dims is None or geo.vector_dim in dims else geo
        if name in REDUCE:
            dim = _arg(args, kwargs, 1, "dim")
            if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise
                return _combine(known, out)
            return _reduce(geo, x, out, _dims(dim, x.ndim))
        if name in RESHAPE:
            return _reshape(geo, x, out)
        if name == "pad":
            pad = list(_arg(args, kwargs, 1, "pad"))
            if not geo.is_map or len(pad) > 4 or any(p < 0 for p in pad):
                raise Unknown("a padding the table does not follow")
            pad += [0] * (4 - len(pad))
            return Geo(Axis(geo.h.a - pad[2] * geo.h.j, geo.h.r, geo.h.j, out.shape[-2]),
                       Axis(geo.w.a - pad[0] * geo.w.j, geo.w.r, geo.w.j, out.shape[-1]))
        if name == "cat" and geo.is_map:
            dim = _arg(args, kwargs, 1, "dim", 0) % x.ndim
            if dim == 1:
                return _combine(known, out)
        raise Unknown(f"{name}, which the table does not model")


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

