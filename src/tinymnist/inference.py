"""Using trained models: reload a run, evaluate it, preprocess real images the way MNIST was made, export
to ONNX and check the export against onnxruntime."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .data import MNIST, normalize
from .engine import Options, Trainer, log_probs
from .errors import UsageError
from .runs import WEIGHTS, RunDir, load_weights


def open_run(path: str | Path) -> RunDir:
    run = RunDir(path)
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json); give a directory `tinymnist train` "
                         f"wrote.")
    if not (run / WEIGHTS).is_file():
        raise UsageError(f"{run.path} has no weights yet (no completed epoch); train or resume it first.")
    return run


def normalization(run: RunDir) -> tuple[float, float]:
    """The training mean and std the run was trained with (recorded in summary.json)."""
    summary = run.summary() if run.finished() else {}
    norm = summary.get("normalization")
    if not norm:
        raise UsageError(f"{run.path} records no normalization (unfinished run); finish it with --resume first.")
    return norm["mean"], norm["std"]


def evaluate_run(run: RunDir, data: MNIST, device: str = "auto") -> dict:
    """Reload the weights and recompute test loss, accuracy and per-class accuracy with the run's precision."""
    summary = run.summary()
    recipe = run.recipe()
    options = Options(device=device, precision=summary.get("precision", "fp32"))
    trainer = Trainer(recipe, data, options, normalization(run))
    trainer.model.load_state_dict(load_weights(run / WEIGHTS, recipe.model).state_dict())
    result = trainer.evaluate()
    predicted = trainer.predict(trainer.test_images).argmax(1).cpu()
    labels = data.test_labels
    result["per_class"] = [100 * float((predicted[labels == c] == c).float().mean()) for c in range(10)]
    result["recorded"] = summary["last_test_acc"]
    return result


# --- real images -----------------------------------------------------------------------------------------

def preprocess(path: Path) -> np.ndarray:
    """An image of a digit (PNG/JPEG, any size or mode) -> 28x28 uint8 as MNIST was made: grayscale, light
    background inverted, cropped to the digit, larger side scaled to 20 px, centred on its centre of mass."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img)
            gray = np.asarray(img.convert("L"), dtype=np.float32)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
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


def predict_images(model: torch.nn.Module, images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """Probabilities (N, 10) for uint8 images (N, 28, 28)."""
    x = torch.from_numpy(images)
    return log_probs(model, x, lambda b: normalize(b, mean, std)).exp()


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
                              verbose=False)
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror}).") from None
    finally:
        onnx_log.setLevel(level)


def onnx_parity(model: torch.nn.Module, path: Path, images: torch.Tensor, mean: float, std: float) -> dict:
    """Compare the exported model with PyTorch on ``images`` (uint8 (N, 28, 28)) through onnxruntime."""
    import onnxruntime

    x = normalize(images, mean, std).contiguous()
    with torch.inference_mode():
        expected = model.eval()(x)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    return {"images": len(images), "same_predictions": bool((got.argmax(1) == expected.argmax(1)).all()),
            "max_abs_diff": float((got - expected).abs().max())}


def load_run_model(run: RunDir) -> torch.nn.Module:
    return load_weights(run / WEIGHTS, run.recipe().model)
