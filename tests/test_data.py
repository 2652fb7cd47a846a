from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import idx_bytes, synthetic_digits, write_mnist
from tinymnist.data import (
    DEFAULT_DIR,
    ENV_VAR,
    FILES,
    augment,
    data_dir,
    download,
    load_mnist,
    locate,
)
from tinymnist.errors import DataError


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, 300, 100, gz=gz)
    data = load_mnist(tmp_path, allow_download=False, expect_counts=None)
    images, labels = synthetic_digits(300, 0)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (300, 28, 28)
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert torch.equal(data.train_labels, torch.from_numpy(labels).long())
    assert len(data.held_out_labels) == 100
    pixels = images / 255
    assert data.mean == pytest.approx(pixels.mean()) and data.std == pytest.approx(pixels.std(ddof=1))


def test_normalize_gives_zero_mean_unit_std(tmp_path: Path) -> None:
    data = load_mnist(write_mnist(tmp_path, 500, 10), allow_download=False, expect_counts=None)
    x = data.normalize(data.train_images)
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.mean()) == pytest.approx(0, abs=1e-4) and float(x.std()) == pytest.approx(1, abs=1e-3)


def test_where_to_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert data_dir() == DEFAULT_DIR == Path("data/MNIST/raw")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir("elsewhere") == Path("elsewhere")


def _corrupt(tmp_path: Path, name: str, content: bytes) -> Path:
    write_mnist(tmp_path, 50, 20, gz=False)
    (tmp_path / name).write_bytes(content)
    return tmp_path


IMAGES, LABELS = synthetic_digits(50, 0)
CORRUPTIONS = {
    "bad magic": ("train-images-idx3-ubyte", idx_bytes(IMAGES, magic=0x1234), "not an IDX file"),
    "labels where images belong": ("train-images-idx3-ubyte", idx_bytes(LABELS), "looks like a label file"),
    "images where labels belong": ("train-labels-idx1-ubyte", idx_bytes(IMAGES), "looks like an image file"),
    "wrong image size": ("train-images-idx3-ubyte", idx_bytes(np.zeros((50, 32, 32), np.uint8)), "32x32"),
    "truncated data": ("train-images-idx3-ubyte", idx_bytes(IMAGES)[:-100], "truncated"),
    "truncated header": ("train-images-idx3-ubyte", idx_bytes(IMAGES)[:9], "header"),
    "too short": ("train-images-idx3-ubyte", b"\x00\x00", "too short"),
    "label out of range": ("train-labels-idx1-ubyte", idx_bytes(np.full(50, 12, np.uint8)), "outside 0..9"),
    "count mismatch": ("train-labels-idx1-ubyte", idx_bytes(LABELS[:40]), "do not belong together"),
    "truncated gzip": ("train-images-idx3-ubyte", gzip.compress(idx_bytes(IMAGES))[:200], "cannot be read"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corruption_gives_data_error(tmp_path: Path, case: str) -> None:
    name, content, expected = CORRUPTIONS[case]
    _corrupt(tmp_path, name, content)
    with pytest.raises(DataError, match=expected) as info:
        load_mnist(tmp_path, allow_download=False, expect_counts=None)
    assert name in str(info.value) or expected == "do not belong together"


def test_wrong_counts_rejected_for_mnist(tmp_path: Path) -> None:
    write_mnist(tmp_path, 50, 20)
    with pytest.raises(DataError, match="expected 60000"):
        load_mnist(tmp_path, allow_download=False)


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing") as info:
        load_mnist(tmp_path, allow_download=False)
    for name, _ in FILES.values():
        assert name in str(info.value)
    assert "--data-dir" in str(info.value) and ENV_VAR in str(info.value)


# --- downloading, against a small HTTP server on 127.0.0.1 -------------------------------------

@pytest.fixture
def mirror(tmp_path: Path):
    served = write_mnist(tmp_path / "served", 50, 20)

    class Quiet(http.server.SimpleHTTPRequestHandler):  # a subclass: the stdlib handler stays as it is
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    checksums = {name: hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest() for name, _ in FILES.values()}
    yield f"http://127.0.0.1:{server.server_address[1]}/", checksums
    server.shutdown()
    server.server_close()


def test_download_good(tmp_path: Path, mirror) -> None:
    url, checksums = mirror
    target = tmp_path / "dl"
    download(target, mirrors=[url], checksums=checksums)
    assert all(p is not None for p in locate(target).values())
    data = load_mnist(target, allow_download=False, expect_counts=None)
    assert len(data.train_labels) == 50
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n, _ in FILES.values())


def test_download_bad_checksum_leaves_nothing(tmp_path: Path, mirror) -> None:
    url, checksums = mirror
    target = tmp_path / "dl"
    bad = {name: "0" * 32 for name in checksums}
    with pytest.raises(DataError, match="checksum mismatch"):
        download(target, mirrors=[url], checksums=bad)
    assert list(target.iterdir()) == []


def test_download_server_gone(tmp_path: Path, mirror) -> None:
    url, checksums = mirror
    port = int(url.rsplit(":", 1)[1].strip("/"))
    target = tmp_path / "dl"
    dead = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/"
    with pytest.raises(DataError, match="could not download") as info:
        download(target, mirrors=[dead], checksums=checksums, timeout=2)
    assert str(target) in str(info.value) and "--no-download" in str(info.value)
    assert list(target.iterdir()) == []


# --- the real MNIST ------------------------------------------------------------------------------

def test_real_mnist(real_mnist) -> None:
    assert real_mnist.train_images.shape == (60_000, 28, 28) and len(real_mnist.held_out_labels) == 10_000
    assert real_mnist.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert real_mnist.held_out_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert real_mnist.mean == pytest.approx(0.1307, abs=5e-5) and real_mnist.std == pytest.approx(0.3081, abs=5e-5)


# --- augmentation ----------------------------------------------------------------------------------

def _batch(n: int = 16) -> torch.Tensor:
    images, _ = synthetic_digits(n, 3)
    return torch.from_numpy(images).unsqueeze(1).float() / 255


def test_augment_identity_at_zero() -> None:
    x = _batch()
    # A zero-width range goes through the sampler and must still give the image back.
    y = augment(x, torch.Generator().manual_seed(0), rotate=1e-12, shift=0, scale=0)
    assert torch.allclose(y, x, atol=1e-5)


def test_augment_shape_dtype_and_per_sample() -> None:
    x = _batch().repeat(1, 1, 1, 1)
    same = x[:1].repeat(8, 1, 1, 1)
    y = augment(same, torch.Generator().manual_seed(0), rotate=10, shift=0.1, scale=0.1)
    assert y.shape == same.shape and y.dtype == same.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    diffs = [float((y[i] - y[0]).abs().max()) for i in range(1, 8)]
    assert min(diffs) > 0.05  # every sample got its own transform


def test_augment_deterministic_under_seed() -> None:
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(5), rotate=8, shift=0.1, scale=0.1)
    b = augment(x, torch.Generator().manual_seed(5), rotate=8, shift=0.1, scale=0.1)
    c = augment(x, torch.Generator().manual_seed(6), rotate=8, shift=0.1, scale=0.1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_elastic_distortion_moves_pixels_by_its_strength_and_only_when_asked() -> None:
    from tinymnist.data import augment

    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28)

    def draw(**kw: float) -> torch.Tensor:
        return augment(images, torch.Generator().manual_seed(7), **kw)

    assert torch.equal(draw(rotate=5.0), draw(rotate=5.0, elastic=0.0))  # no elastic draw: the same stream
    mild, strong = draw(rotate=5.0, elastic=8.0), draw(rotate=5.0, elastic=34.0)
    assert torch.equal(mild, draw(rotate=5.0, elastic=8.0))  # deterministic per generator
    base = draw(rotate=5.0)
    assert 0 < (mild - base).abs().mean() < (strong - base).abs().mean()
    assert mild.min() >= 0 and mild.max() <= 1


def test_pixel_statistics_from_counts_are_the_float64_figures(small_mnist) -> None:
    from tinymnist.data import pixel_statistics

    for images in (small_mnist.train_images, torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)):
        pixels = images.double() / 255  # the formula the counts replace
        mean, std = pixel_statistics(images)
        assert abs(mean - float(pixels.mean())) < 1e-12 and abs(std - float(pixels.std())) < 1e-12
    assert (small_mnist.mean, small_mnist.std) == pixel_statistics(small_mnist.train_images)


def test_the_elastic_field_is_the_one_drawn_with_a_kernel_built_per_batch() -> None:
    from tinymnist.data import ELASTIC_SIGMA, elastic_field

    def per_batch(n: int, h: int, w: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
        noise = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
        radius = int(2 * ELASTIC_SIGMA)
        x = torch.arange(-radius, radius + 1, dtype=noise.dtype)
        kernel = torch.exp(-x ** 2 / (2 * ELASTIC_SIGMA ** 2))
        kernel = kernel / kernel.sum()
        f = torch.nn.functional
        smooth = f.conv2d(noise.reshape(-1, 1, h, w), kernel.view(1, 1, 1, -1), padding=(0, radius))
        smooth = f.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(radius, 0)).reshape(n, 2, h, w)
        return (smooth * alpha).permute(0, 2, 3, 1) * torch.tensor([2 / w, 2 / h], dtype=noise.dtype)

    for _ in range(2):  # the second call uses the kernel built by the first
        new = elastic_field(5, torch.Size((28, 24)), 16.0, torch.Generator().manual_seed(3))
        assert torch.equal(new, per_batch(5, 28, 24, 16.0, torch.Generator().manual_seed(3)))
