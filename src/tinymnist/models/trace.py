"""Receptive-field tracing: the geometry of each tensor derived from the image, followed through every torch
function it meets (a ``TorchFunctionMode``), one handler per kind of operation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from tinymnist.models.layers import _Table


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
