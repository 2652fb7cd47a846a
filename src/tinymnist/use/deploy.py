"""Deploying a trained model small: an int8 ONNX file (ONNX Runtime's static quantization) and a static web
folder whose page runs the model in the browser with a plain-JavaScript forward pass (web/tinymnist.js).

Both start from a run's loaded model. The web folder carries a *layer program*: the model traced with torch.fx
into a chain of a few kinds of layer, each BatchNorm folded into the convolution before it (or kept as a
per-channel scale and shift where no convolution precedes it), weights as base64 float32."""

from __future__ import annotations

import base64
import json
import operator
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinymnist.errors import UsageError
from tinymnist.runs.loading import LoadedModel

WEB_FILES = ("index.html", "page.js", "tinymnist.js")  # web/, copied as they are; model.js is written
CALIBRATION_IMAGES = 1000  # training images that set the activations' int8 ranges (never test images)
SUPPORTED = "Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Linear, Dropout, flatten, " \
            "log_softmax, and their functions (F.relu, F.max_pool2d, F.avg_pool2d, x.mean((2, 3)), x.view)"


def _b64(array: torch.Tensor) -> str:
    return base64.b64encode(array.detach().to(torch.float32).contiguous().numpy().tobytes()).decode("ascii")


def _pair(value: int | tuple[int, ...]) -> int:
    """One number for a square kernel, stride or padding; a non-square one is not supported."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise UsageError(f"the web page runs square kernels, strides and paddings only, not {value}.")
        return value[0]
    return value


def _folded_bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in evaluation as y = scale * x + shift, per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    return scale, shift


def layer_program(model: nn.Module, name: str) -> list[dict]:
    """``model`` (in evaluation) as a chain of layers the page's forward pass runs; each BatchNorm right after a
    convolution folded into it. A layer it cannot run, or a graph that is not a chain, is a UsageError naming it."""
    from torch import fx

    model = model.eval()
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # any tracing failure means the same to the user: not a chain it can read
        raise UsageError(f"model {name} cannot be traced into layers for the web page ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); it supports {SUPPORTED}.") from None
    modules = dict(model.named_modules())
    program: list[dict] = []
    previous = None
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            previous = node if node.op == "placeholder" else previous
            continue
        if node.op == "call_method" and node.target == "size":
            continue  # used by a view/reshape to flatten
        if not node.args or node.args[0] is not previous:
            raise UsageError(f"model {name} is not a chain of layers ({node.name} does not take the layer before it "
                             f"as input); the web page runs a chain of {SUPPORTED}.")
        previous = node
        layer = _layer(node, modules, name)
        if layer is None:
            continue
        if layer["op"] == "affine" and program and program[-1]["op"] == "conv" and program[-1].pop("_fold", False):
            conv = program[-1]
            scale, shift = layer.pop("_scale"), layer.pop("_shift")
            conv["_weight"] = conv["_weight"] * scale.view(-1, 1, 1, 1)
            conv["_bias"] = conv["_bias"] * scale + shift
            continue
        program.append(layer)
    for layer in program:
        layer.pop("_fold", None)
        for key in [k for k in layer if k.startswith("_")]:
            layer[key[1:]] = _b64(layer.pop(key))
    return program


def _layer(node: object, modules: dict[str, nn.Module], name: str) -> dict | None:
    """One fx node as a layer of the program (None: nothing to run, e.g. dropout in evaluation)."""
    if node.op == "call_module":
        return _module_layer(node, modules[node.target], name)
    return _function_layer(node, name)


def _module_layer(node: object, m: nn.Module, name: str) -> dict | None:
    """A call of the module ``m`` as a layer of the program."""
    if isinstance(m, nn.Conv2d):
        if _pair(m.dilation) != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UsageError(f"model {name}: layer {node.target} ({m}) uses dilation, a padding mode or a "
                             f"padding by name, which the web page does not run.")
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
        return {"op": "conv", "cin": m.in_channels, "cout": m.out_channels, "k": _pair(m.kernel_size),
                "stride": _pair(m.stride), "padding": _pair(m.padding), "groups": m.groups,
                "_weight": m.weight.detach(), "_bias": bias, "_fold": True}
    if isinstance(m, nn.BatchNorm2d):
        scale, shift = _folded_bn(m)
        return {"op": "affine", "_scale": scale, "_shift": shift}
    if isinstance(m, nn.ReLU):
        return {"op": "relu"}
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        if m.ceil_mode or _pair(m.padding) != 0 or (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != 1):
            raise UsageError(f"model {name}: layer {node.target} ({m}) pads, dilates or rounds up, which the "
                             f"web page does not run.")
        kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
        return {"op": kind, "k": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size)}
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return {"op": "gap"}
    if isinstance(m, nn.Linear):
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
        return {"op": "linear", "cin": m.in_features, "cout": m.out_features, "_weight": m.weight.detach(),
                "_bias": bias}
    if isinstance(m, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout | nn.Identity):
        return None
    if isinstance(m, nn.Flatten):
        return {"op": "flatten"}
    if isinstance(m, nn.LogSoftmax):
        return {"op": "logsoftmax"}
    raise UsageError(f"model {name}: layer {node.target} is a {type(m).__name__}, which the web page does not "
                     f"run; it supports {SUPPORTED}.")


def _function_layer(node: object, name: str) -> dict | None:
    """A call of a torch function or a tensor method as a layer of the program."""
    target = getattr(node.target, "__name__", str(node.target))
    if target in ("relu", "relu_"):
        return {"op": "relu"}
    if target in ("dropout", "dropout2d", "contiguous"):
        return None
    if target in ("max_pool2d", "avg_pool2d"):
        k, stride, padding = (_node_arg(node, i, key, default) for i, key, default in
                              ((1, "kernel_size", None), (2, "stride", None), (3, "padding", 0)))
        ceil = _node_arg(node, 5 if target == "max_pool2d" else 4, "ceil_mode", False)
        dilation = _node_arg(node, 4, "dilation", 1) if target == "max_pool2d" else 1
        if ceil or _pair(padding) != 0 or _pair(dilation) != 1:
            raise UsageError(f"model {name}: {target} pads, dilates or rounds up, which the web page does not run.")
        return {"op": target[:3] + "pool", "k": _pair(k), "stride": _pair(stride or k)}
    if target == "adaptive_avg_pool2d" and _node_arg(node, 1, "output_size") in (1, (1, 1), [1, 1]):
        return {"op": "gap"}
    if target == "mean" and not _node_arg(node, 2, "keepdim", False) and \
            {d % 4 for d in _node_arg(node, 1, "dim", ())} == {2, 3}:
        return {"op": "gap"}  # x.mean((2, 3)): global average pooling, flattened
    if target in ("flatten", "view", "reshape") or node.target is operator.getitem:
        return {"op": "flatten"}
    if target == "log_softmax":
        return {"op": "logsoftmax"}
    raise UsageError(f"model {name}: {node.op} {target!r} is not a layer the web page runs; it supports "
                     f"{SUPPORTED}.")


def _node_arg(node: object, i: int, key: str, default: object = None) -> object:
    """Argument ``i`` (or keyword ``key``) of a traced call, as the forward wrote it."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


# --- the static page ---------------------------------------------------------------------------------------

def empty_folder(directory: Path) -> None:
    """Refuse a path that is a file or a folder with something in it: an export never overwrites."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory} exists and is not an empty folder; give a new folder.")


def export_web(loaded: LoadedModel, directory: Path, recorded_test_acc: float | None) -> dict:
    """Write the draw-a-digit page with ``loaded``'s model as a static folder; returns its files' sizes."""
    empty_folder(directory)
    # a user's FILE.py:NAME without its folder: the page is published
    model = {"name": Path(loaded.name).name, "params": loaded.params, "mean": loaded.mean, "std": loaded.std,
             "recorded_test_acc": recorded_test_acc, "layers": layer_program(loaded.model, loaded.name)}
    package = files("tinymnist")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in WEB_FILES:
            (directory / name).write_bytes((package / "web" / name).read_bytes())
        (directory / "style.css").write_bytes((package / "static" / "style.css").read_bytes())  # the served page's
        (directory / "model.js").write_text("// The trained model as a chain of layers (weights: base64 float32).\n"
                                            f"var TINYMNIST_MODEL = {json.dumps(model, separators=(',', ':'))};\n")
    except OSError as e:
        raise UsageError(f"cannot write the page into {directory} ({e.strerror}); give a folder you can "
                         f"write.") from None
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}


# --- int8 --------------------------------------------------------------------------------------------------

def _compact(model: object) -> None:
    """Drop what an int8 file does not need to run: node and value metadata, doc strings, and long tensor names
    (the exporter's and the quantizer's names are most of a tiny model's bytes)."""
    graph = model.graph
    del graph.value_info[:]
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.doc_string = ""
        del node.metadata_props[:]
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    graph.doc_string = ""
    del model.metadata_props[:]


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization of the ONNX file ``fp32`` with ONNX Runtime's tools: pre-processing (which folds
    each BatchNorm into the convolution before it), then QDQ with per-channel int8 weights and uint8
    activations whose ranges come from ``calibration`` (normalized training images, (N, 1, 28, 28))."""
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"image": calibration[i:i + 100]} for i in range(0, len(calibration), 100))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        root = logging.getLogger()  # the quantizer logs its own notes (an axis it skips) on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32), str(pre))
            quantize_static(str(pre), str(raw), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        finally:
            root.setLevel(level)
        model = onnx.load(str(raw))
    _compact(model)
    onnx.checker.check_model(model)
    try:
        onnx.save(model, str(out))
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror}).") from None


def onnx_predictions(path: Path, x: np.ndarray) -> np.ndarray:
    """Log-probabilities (N, 10) of the ONNX file at ``path`` for normalized inputs ``x`` (N, 1, 28, 28)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": x[i:i + 2000]})[0] for i in range(0, len(x), 2000)])


def compare_int8(fp32: Path, int8: Path, x: np.ndarray, labels: np.ndarray) -> dict:
    """The fp32 and int8 files side by side on ``x`` (normalized test images) and their labels: bytes, accuracy
    (percent) and the fraction of images both classify the same."""
    a, b = onnx_predictions(fp32, x).argmax(1), onnx_predictions(int8, x).argmax(1)
    return {"images": len(x), "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
            "fp32_test_acc": round(100 * float((a == labels).mean()), 2),  # percent
            "int8_test_acc": round(100 * float((b == labels).mean()), 2),
            "agreement": float((a == b).mean())}


def node_ops(path: Path) -> list[str]:
    """The operator types of an ONNX file's graph, in order."""
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]

