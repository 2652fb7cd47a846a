"""MNIST: find, download, verify and parse the IDX files; hold the set in memory as uint8 tensors.

The whole data set lives in memory as uint8 and is handed out as normalized float batches,
so the training path does no per-image Python work.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinymnist.errors import DataError

# The four files, with the MD5 of their gzipped form as published on the mirrors.
FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
}
# The public mirrors torchvision downloads from, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DEFAULT_DIR = Path("data/MNIST/raw")  # torchvision's layout, so an existing download is reused
ENV_VAR = "TINYMNIST_DATA"
IMAGE_MAGIC, LABEL_MAGIC = 0x0803, 0x0801  # unsigned byte, 3 dims / 1 dim
EXPECTED_COUNTS = (60_000, 10_000)


def data_dir(option: str | os.PathLike | None = None) -> Path:
    """Where to look for the files: the option, else $TINYMNIST_DATA, else ./data/MNIST/raw."""
    if option:
        return Path(option)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_DIR


def locate(directory: Path) -> dict[str, Path | None]:
    """The path of each of the four files in ``directory`` (plain or .gz), or None when absent."""
    found: dict[str, Path | None] = {}
    for key, (name, _) in FILES.items():
        candidates = [directory / name, directory / f"{name}.gz"]
        found[key] = next((p for p in candidates if p.is_file()), None)
    return found


def _how_to_fix(directory: Path) -> str:
    names = ", ".join(f"{name}[.gz]" for name, _ in FILES.values())
    return (f"put the four files ({names}) in {directory}, or point the tool at a directory that has them "
            f"with --data-dir DIR or the {ENV_VAR} environment variable")


def download(directory: Path, mirrors: Sequence[str] = MIRRORS, checksums: dict[str, str] | None = None,
             timeout: float = 30.0) -> None:
    """Download the missing gzipped files into ``directory``, verifying each file's MD5.

    Each file is written to a temporary file beside its target and renamed only once verified, so an
    interrupted or failed download never leaves a partial file.
    """
    checksums = checksums or {name: md5 for name, md5 in FILES.values()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data directory {directory} ({e.strerror}); "
                        f"{_how_to_fix(directory)}.") from None
    for key, path in locate(directory).items():
        if path is not None:
            continue
        name = FILES[key][0]
        errors = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                _fetch_verified(url, directory / f"{name}.gz", checksums[name], timeout)
                break
            except (OSError, urllib.error.URLError, ValueError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        else:
            raise DataError(f"could not download {name}.gz into {directory} ({'; '.join(errors)}); "
                            f"{_how_to_fix(directory)}, or use --no-download to skip downloading.")


def _fetch_verified(url: str, target: Path, md5: str, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch (MD5 {digest.hexdigest()}, expected {md5})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read: {e}; replace it with a good copy.") from None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse an IDX file of ``kind`` 'images' (N, 28, 28) or 'labels' (N,) into a uint8 array."""
    raw = _read_bytes(path)
    expected = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes); replace it with a good copy.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        names = {IMAGE_MAGIC: "an image file", LABEL_MAGIC: "a label file"}
        looks = names.get(magic, f"not an IDX file (magic {magic:#x})")
        raise DataError(f"{path} should be {kind} but looks like {looks}; check which file is which.")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; replace it with a good copy.")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28; is this MNIST?")
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path} has {len(raw) - header} bytes of data for a header that announces {size} "
                        f"(dimensions {dims}); the file is truncated or corrupt, replace it.")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and size and array.max() > 9:
        raise DataError(f"{path} has a label {int(array.max())}, outside 0..9; the file is corrupt, replace it.")
    return array


@dataclass(kw_only=True)
class MNIST:
    """The whole set as uint8 tensors, plus the normalization computed from the training images."""

    train_images: torch.Tensor  # (N, 28, 28) uint8
    train_labels: torch.Tensor  # (N,) int64
    # the images each epoch is scored on, of the kind ``held_out`` says: "test" (the test files) or
    # "validation" (the training files' last images, split off by ``load_validation_split``)
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor
    source: Path | None = None
    full_sizes: tuple[int, int] | None = None  # (train, test) images in the files this came from
    held_out: str = "test"

    def __post_init__(self) -> None:
        if self.full_sizes is None:
            self.full_sizes = (len(self.train_labels), len(self.held_out_labels))
        self.mean, self.std = pixel_statistics(self.train_images)

    def subset(self, train: int, test: int | None = None) -> MNIST:
        """The first ``train`` training and ``test`` held-out images (for quick runs and tests)."""
        test = len(self.held_out_labels) if test is None else test
        return MNIST(train_images=self.train_images[:train], train_labels=self.train_labels[:train],
                     held_out_images=self.held_out_images[:test], held_out_labels=self.held_out_labels[:test],
                     source=self.source, full_sizes=self.full_sizes, held_out=self.held_out)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)


def pixel_statistics(images: torch.Tensor) -> tuple[float, float]:
    """(mean, sample std) of uint8 ``images`` scaled to [0, 1], from a count of each of the 256 pixel values."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    n = float(counts.sum())
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * values).sum()) / n if n else float("nan")
    variance = float((counts * (values - mean) ** 2).sum()) / (n - 1) if n > 1 else float("nan")
    return mean, variance ** 0.5


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) or float [0, 1] (N, 1, 28, 28) -> normalized float (N, 1, 28, 28)."""
    if images.dtype == torch.uint8:
        images = images.unsqueeze(1).float().div_(255)
    return (images - mean) / std


def load_mnist(directory: str | os.PathLike | None = None, allow_download: bool = True,
               expect_counts: tuple[int, int] | None = EXPECTED_COUNTS) -> MNIST:
    """Find (or download), validate and load MNIST. ``expect_counts=None`` accepts any sizes (tests)."""
    where = data_dir(directory)
    found = locate(where)
    if any(p is None for p in found.values()):
        missing = [FILES[k][0] for k, p in found.items() if p is None]
        if not allow_download:
            raise DataError(f"MNIST files missing in {where}: {', '.join(missing)}; {_how_to_fix(where)}.")
        download(where)
        found = locate(where)
    arrays = {key: read_idx(path, key.split("_")[1]) for key, path in found.items()}
    for split, expected in zip(("train", "test"), expect_counts or (None, None), strict=True):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataError(f"{found[f'{split}_images']} has {n_images} images but {found[f'{split}_labels']} "
                            f"has {n_labels} labels; the two files do not belong together.")
        if expected is not None and n_images != expected:
            raise DataError(f"{found[f'{split}_images']} has {n_images} images, expected {expected} for the "
                            f"MNIST {split} set; replace it with the full file.")
    tensors = {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}
    return MNIST(train_images=tensors["train_images"], train_labels=tensors["train_labels"].long(),
                 held_out_images=tensors["test_images"], held_out_labels=tensors["test_labels"].long(), source=where)


VALIDATION = 10_000  # the search scores trials on the last this-many training images


def load_validation_split(directory: str | os.PathLike | None = None, validation: int = VALIDATION,
                          train: int | None = None, fold: int = 0) -> MNIST:
    """The training files only, split in two: ``validation`` images to score on, in the place of the test set,
    and the first ``train`` of the others (default: all of them) to train on. Fold 0 holds out the last
    ``validation`` images, fold 1 the ``validation`` before them, and so on (cross-validation: each fold scores
    on images the others train on). The test files are never opened (they need not exist), so nothing chosen
    on this split has seen them; never downloads."""
    where = data_dir(directory)
    found = {k: p for k, p in locate(where).items() if k.startswith("train")}
    if any(p is None for p in found.values()):
        missing = [FILES[k][0] for k, p in found.items() if p is None]
        raise DataError(f"MNIST training files missing in {where}: {', '.join(missing)}; {_how_to_fix(where)}.")
    images, labels = read_idx(found["train_images"], "images"), read_idx(found["train_labels"], "labels")
    if len(images) != len(labels):
        raise DataError(f"{found['train_images']} has {len(images)} images but {found['train_labels']} has "
                        f"{len(labels)} labels; the two files do not belong together.")
    end = len(images) - fold * validation
    start = end - validation
    rest = len(images) - validation
    train = rest if train is None else train
    if validation < 1 or fold < 0 or start < 0 or train < 1 or train > rest:
        raise DataError(f"{found['train_images']} has {len(images)} images: too few for {train} to train on and "
                        f"fold {fold} of {validation} to validate on.")
    images, labels = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()).long()
    keep = torch.cat([torch.arange(start), torch.arange(end, len(images))])[:train]
    return MNIST(train_images=images[keep], train_labels=labels[keep], held_out_images=images[start:end],
                 held_out_labels=labels[start:end], source=where, full_sizes=(len(images), 0), held_out="validation")


ELASTIC_SIGMA = 4.0  # pixels: the smoothing of an elastic distortion's random displacement field (Simard's)


def augment(images: torch.Tensor, generator: torch.Generator, rotate: float = 0.0, shift: float = 0.0,
            scale: float = 0.0, elastic: float = 0.0) -> torch.Tensor:
    """Random affine per sample, batched: rotation in ±``rotate`` degrees, translation in ±``shift`` of
    the image side, zoom in 1±``scale``; with ``elastic`` > 0, an elastic distortion too (a uniform random
    displacement field per sample, smoothed by a Gaussian of ELASTIC_SIGMA pixels, times ``elastic`` pixels).
    Input and output are float [0, 1] (N, 1, H, W); the border is filled with 0 (the MNIST background). The
    elastic field is drawn only when asked for, so recipes without it draw exactly what they drew before.
    Draws from ``generator`` whatever the settings: the caller asks whether a recipe is augmented."""
    n = images.shape[0]
    if n == 0:
        return images
    params = torch.rand(n, 4, generator=generator, device=generator.device).to(images.device) * 2 - 1
    angle = params[:, 0] * (rotate * torch.pi / 180)
    zoom = 1 + params[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([
        torch.stack([cos, -sin, params[:, 2] * shift * 2], 1),
        torch.stack([sin, cos, params[:, 3] * shift * 2], 1),
    ], 1).to(images.dtype)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic:
        grid = grid + elastic_field(n, images.shape[-2:], elastic, generator).to(images.device, images.dtype)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.cache
def gaussian_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The normalized 1-D Gaussian of ELASTIC_SIGMA pixels (radius 2 sigma) on ``device``, built once."""
    radius = int(2 * ELASTIC_SIGMA)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-x ** 2 / (2 * ELASTIC_SIGMA ** 2))
    return kernel / kernel.sum()


def elastic_field(n: int, size: torch.Size, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Displacements (n, H, W, 2) in grid_sample's units (2 / side per pixel): uniform noise in [-1, 1] per
    pixel and axis, smoothed by a separable Gaussian of ELASTIC_SIGMA pixels, times ``alpha`` pixels."""
    h, w = size
    noise = torch.rand(n, 2, h, w, generator=generator, device=generator.device) * 2 - 1
    kernel = gaussian_kernel(noise.device, noise.dtype)
    radius = len(kernel) // 2
    f = torch.nn.functional
    smooth = f.conv2d(noise.reshape(-1, 1, h, w), kernel.view(1, 1, 1, -1), padding=(0, radius))
    smooth = f.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(radius, 0)).reshape(n, 2, h, w)
    field = (smooth * alpha).permute(0, 2, 3, 1)
    field[..., 0] *= 2 / w  # x, in grid_sample's units
    field[..., 1] *= 2 / h  # y
    return field
