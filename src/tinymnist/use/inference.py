"""Using trained models: reload a run, evaluate it, preprocess real images the way MNIST was made, export
to ONNX and check the export against onnxruntime."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
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

# Images come from outside (a photo, a scan, an upload): only these formats are ever handed to a decoder, so a
# file that says it is EPS (Ghostscript), DDS, TIFF or any other format Pillow knows is refused unread.
IMAGE_FORMATS = ("PNG", "JPEG")
# A 12-megapixel phone photo (4032 x 3024) fits, and so does 4096 x 4096; a PNG at the cap decodes to at most
# 64 MiB (RGBA) before it is reduced (docs/threat-model.md).
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # a PNG or JPEG of a digit is far smaller; counted as bytes are read
WORKING_SIDE = 1024  # larger images are reduced to about this side before any float work: a digit needs 20 px
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNG grayscale: 0..65535


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file, refused once more than MAX_IMAGE_BYTES have been read: the size a file
    reports (0 for /dev/zero or a pipe) is not trusted."""
    try:
        # opened without blocking (a FIFO nobody writes to would wait forever), then read as usual
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; give a PNG or JPEG file.") from None
    except OSError as e:
        raise UsageError(f"{path} cannot be read ({e.strerror}).") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise UsageError(f"{path} is over the {MAX_IMAGE_BYTES // 2**20} MB limit for an image of a digit; crop "
                         f"or shrink it.")
    return data


def preprocess(path: Path) -> np.ndarray:
    """``preprocess_bytes`` of an image file, read at most MAX_IMAGE_BYTES (+1) bytes."""
    return preprocess_bytes(read_image_file(path), str(path))


def _open(data: bytes, name: str) -> object:
    """The PNG or JPEG in ``data``, opened (its header read, nothing decoded) and within MAX_IMAGE_PIXELS; a
    UsageError for anything else."""
    import io

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our own cap below is stricter
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise UsageError(f"{name} is not a PNG or JPEG image; give a PNG or JPEG.") from None
        except Image.DecompressionBombError:
            raise UsageError(f"{name} declares an image over the {MAX_IMAGE_PIXELS / 10**6:.1f} megapixel limit; "
                             f"crop or shrink it.") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise UsageError(f"{name} is {width:,} x {height:,} pixels, over the {MAX_IMAGE_PIXELS / 10**6:.1f} "
                         f"megapixel limit for an image of a digit; crop or shrink it.")
    return img


@contextlib.contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Whatever a decoder raises on a damaged file (the file's fault) as one UsageError."""
    try:
        yield
    except UsageError:
        raise
    except MemoryError:
        raise UsageError(f"{name} needs more memory to decode than this machine has free; shrink it.") from None
    except Exception as e:
        raise UsageError(f"{name} cannot be read as an image ({type(e).__name__}: {_one_line(e)}); give a PNG "
                         f"or JPEG.") from None


def image_pixels(data: bytes, name: str = "the image") -> int:
    """Width x height of a PNG or JPEG within the pixel cap, from its header alone (nothing is decoded); a
    UsageError for anything else. A server uses it to tell a cheap decode from an expensive one before it starts."""
    with _decoding(name), _open(data, name) as img:
        return img.size[0] * img.size[1]


def _gray_from_header(data: bytes, name: str) -> np.ndarray:
    """The image in ``data`` as float32 gray (0..255, transparency over white), reduced to about WORKING_SIDE;
    refused unless it is a PNG or JPEG of at most MAX_IMAGE_PIXELS (read from the header, before decoding)."""
    with _decoding(name), _open(data, name) as img:
        if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when the longer side keeps WORKING_SIDE
            width, height = img.size
            longer = max(width, height)
            img.draft("L", (max(1, width * WORKING_SIDE // longer), max(1, height * WORKING_SIDE // longer)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        return _to_gray(img)


def _to_gray(img: object) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        img, top = img.convert("I"), 65535  # scaled to 0..255 below, not clipped at 255
    elif img.mode == "1" or (img.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "P", "PA")):
        img, top = img.convert("L"), 255
    else:
        top = 255
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
    factor = -(-max(img.size) // WORKING_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # a box average: a stroke stays, the float arrays below stay small
    alpha = None
    if img.mode in ("RGBA", "LA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
    if img.mode == "I":
        gray = np.asarray(img, dtype=np.float32) * (255 / top)
    else:
        gray = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.float32)
    if alpha is not None:  # transparent pixels are paper
        gray = gray * alpha + 255 * (1 - alpha)
    return gray


def preprocess_bytes(data: bytes, name: str = "the image") -> np.ndarray:
    """An image of a digit (PNG/JPEG, any mode, at most MAX_IMAGE_PIXELS) -> 28x28 uint8 as MNIST was made:
    grayscale, light background inverted, cropped to the digit, larger side scaled to 20 px, centred on its
    centre of mass. ``name`` names it in errors. Every image the decoders cannot read is one UsageError."""
    from PIL import Image

    if not data:
        raise UsageError(f"{name} is empty; give a PNG or JPEG.")
    if len(data) > MAX_IMAGE_BYTES:
        raise UsageError(f"{name} is over the {MAX_IMAGE_BYTES // 2**20} MB limit for an image of a digit; crop or "
                         f"shrink it.")
    gray = _gray_from_header(data, name)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = gray - background if background < 128 else background - gray  # digits are light on dark in MNIST
    ink = np.clip(ink, 0, None)
    if ink.max() < 40:
        raise UsageError(f"{name} looks blank (no stroke stands out from the background); give an image of a digit.")
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


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or "no detail"


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
