"""Using trained models: reload a run, evaluate it, preprocess real images the way MNIST was made, export
to ONNX and check the export against onnxruntime."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tinymnist.data import MNIST
from tinymnist.errors import UsageError
from tinymnist.machine import pick_device
from tinymnist.runs.loading import LoadedModel, load_model
from tinymnist.runs.records import WEIGHTS, RunRecord
from tinymnist.training.engine import Evaluation, evaluate, log_probs, model_inputs
from tinymnist.training.executor import cut
from tinymnist.training.placement import autocast, resolve_precision

MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo of a digit is plenty; larger images are refused unread
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # likewise for the file


def _feed(loaded: LoadedModel, device: str = "auto") -> tuple[torch.device, torch.nn.Module, Callable, Callable]:
    """The run's model on ``device`` with the input layout, normalization and precision it was trained with."""
    dev = pick_device(device)
    precision = resolve_precision(loaded.precision, dev)
    fmt = torch.channels_last if loaded.channels_last else torch.contiguous_format
    model = loaded.model.to(dev, memory_format=fmt)
    return dev, model, model_inputs(loaded.mean, loaded.std, fmt), lambda: autocast(dev, precision)


def evaluate_loaded(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                    device: str = "auto") -> Evaluation:
    """engine.evaluate on a run's model, fed as it was trained: the recorded test accuracy comes back."""
    dev, model, inputs, cast = _feed(loaded, device)
    return evaluate(model, images.to(dev), labels.to(dev), inputs, cast)


def evaluate_run(run: RunRecord, data: MNIST, device: str = "auto", trust: bool = False) -> dict:
    """Reload a finished run and recompute its test loss, accuracy and per-class accuracy."""
    data = cut(run.require(finished=True).spec(), data)
    result = evaluate_loaded(load_model(run, trust), data.held_out_images, data.held_out_labels, device)
    predicted, labels = result.predicted.cpu(), data.held_out_labels
    return {"test_loss": result.loss, "test_acc": result.acc, "recorded": run.summary()["last_test_acc"],
            "per_class": [100 * float((predicted[labels == c] == c).float().mean()) for c in range(10)]}


def confident_predictions(run: RunRecord, data: MNIST, trust: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(confidence, predicted digit) of a run's model on every test image of ``data``; None when the run kept
    no weights (the records committed under evidence/ keep none)."""
    if not (run / WEIGHTS).is_file():
        return None
    result = evaluate_loaded(load_model(run, trust), data.held_out_images, data.held_out_labels, "cpu")
    return result.log_probs.exp().max(1)


# --- real images -----------------------------------------------------------------------------------------

def preprocess(path: Path) -> np.ndarray:
    """``preprocess_bytes`` of an image file, refused unread when over MAX_IMAGE_BYTES."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist.") from None
    if size > MAX_IMAGE_BYTES:
        raise UsageError(f"{path} is {size / 2**20:.0f} MB, over the {MAX_IMAGE_BYTES // 2**20} MB limit for an "
                         f"image of a digit; crop or shrink it.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path} cannot be read ({e.strerror}).") from None
    return preprocess_bytes(data, str(path))


def preprocess_bytes(data: bytes, name: str = "the image") -> np.ndarray:
    """An image of a digit (PNG/JPEG, any size or mode) -> 28x28 uint8 as MNIST was made: grayscale, light
    background inverted, cropped to the digit, larger side scaled to 20 px, centred on its centre of mass.
    ``name`` names it in errors. Images over MAX_IMAGE_PIXELS are refused from their header, undecoded."""
    import io

    from PIL import Image, UnidentifiedImageError

    path = name
    if not data:
        raise UsageError(f"{name} is empty; give a PNG or JPEG.")
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below is stricter
            width, height = img.size  # read from the header: nothing is decompressed yet
            if width * height > MAX_IMAGE_PIXELS:
                raise UsageError(f"{path} is {width:,} x {height:,} pixels, over the {MAX_IMAGE_PIXELS // 10**6} "
                                 f"megapixel limit for an image of a digit; crop or shrink it.")
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img)
            gray = np.asarray(img.convert("L"), dtype=np.float32)
    except Image.DecompressionBombError:
        raise UsageError(f"{path} declares an image over the {MAX_IMAGE_PIXELS // 10**6} megapixel limit; crop "
                         f"or shrink it.") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path} cannot be read as an image (not a format Pillow knows); give a PNG or "
                         f"JPEG.") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{path} cannot be read as an image ({e}); give a PNG or JPEG.") from None
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = gray - background if background < 128 else background - gray  # digits are light on dark in MNIST
    ink = np.clip(ink, 0, None)
    if ink.max() < 40:
        raise UsageError(f"{path} looks blank (no stroke stands out from the background); give an image of a digit.")
    ink = ink / ink.max() * 255
    rows, cols = np.nonzero(ink > 0.25 * 255)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
                       dtype=np.float32)
    total = small.sum()
    cy, cx = ((np.arange(small.shape[0]) @ small.sum(1)) / total, (np.arange(small.shape[1]) @ small.sum(0)) / total)
    out = np.zeros((28, 28), dtype=np.float32)
    top, left = int(round(14 - cy - 0.5)), int(round(14 - cx - 0.5))
    top, left = min(max(top, 0), 28 - small.shape[0]), min(max(left, 0), 28 - small.shape[1])
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return np.clip(out, 0, 255).astype(np.uint8)


def predict_images(loaded: LoadedModel, images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """Probabilities (N, 10) for uint8 images (N, 28, 28), fed as the run was trained."""
    dev, model, inputs, cast = _feed(loaded, device)
    return log_probs(model, torch.from_numpy(images).to(dev), inputs, cast).exp().cpu()


# --- ONNX ------------------------------------------------------------------------------------------------

def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch dimension (input 'image' (N, 1, 28, 28), output 'log_probs' (N, 10))."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter logs warnings that concern other models (torchvision operators, deprecations): not ours to show.
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), input_names=["image"],
                              output_names=["log_probs"], dynamic_shapes=({0: batch},), dynamo=True,
                              external_data=False, verbose=False)  # one self-contained file, no FILE.data
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror}).") from None
    finally:
        onnx_log.setLevel(level)


def onnx_parity(loaded: LoadedModel, path: Path, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Compare the exported model with PyTorch (fp32, as exported) on ``images`` (uint8 (N, 28, 28)) through
    onnxruntime."""
    import onnxruntime

    inputs = model_inputs(loaded.mean, loaded.std)
    expected = evaluate(loaded.model.to(memory_format=torch.contiguous_format), images, labels, inputs).log_probs
    x = inputs(images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    return {"images": len(images), "same_predictions": bool((got.argmax(1) == expected.argmax(1)).all()),
            "max_abs_diff": float((got - expected).abs().max())}
