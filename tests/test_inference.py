from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import start_run
from tinymnist.cli.main import main
from tinymnist.errors import UsageError
from tinymnist.runs.loading import load_model
from tinymnist.runs.records import RunRecord
from tinymnist.runs.runner import train_run
from tinymnist.training.recipes import Recipe
from tinymnist.use.inference import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, predict_images, preprocess, preprocess_bytes


@pytest.fixture(scope="module")
def trained(real_mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An original_step4 run trained briefly on 6,000 real digits (about 97-98% test accuracy)."""
    data = real_mnist.subset(6000)
    run = start_run(tmp_path_factory.mktemp("runs"), "original_step4", Recipe(model="original_step4", epochs=2,
                                                                               seed=0), data)
    train_run(run, data)
    return run.path


def test_eval_reproduces_the_recorded_accuracy(trained_run: Path, mnist_dir: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    # The run was evaluated on its 1,000 test images while training; eval reloads it and recomputes them.
    code = main(["eval", str(trained_run), "--data-dir", str(mnist_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "matches the recorded final test accuracy" in out and "per class" in out
    recorded = RunRecord(trained_run).summary()["last_test_acc"]
    assert f"test accuracy {recorded:.2f}%" in out


def variants(digit: np.ndarray, tmp: Path) -> list[Path]:
    """The same digit as a user might photograph it: large, off-centre, inverted, RGB on a light background."""
    big = Image.fromarray(digit).resize((180, 180), Image.Resampling.BICUBIC)
    paths = []
    canvas = Image.new("L", (400, 300), 0)
    canvas.paste(big, (30, 100))
    paths.append(tmp / "large-off-centre.png")
    canvas.save(paths[-1])
    inverted = Image.fromarray(255 - np.asarray(canvas))
    paths.append(tmp / "inverted.png")
    inverted.save(paths[-1])
    rgb = Image.new("RGB", (320, 260), (235, 230, 220))  # paper
    mask = Image.fromarray(np.asarray(big))
    rgb.paste(Image.new("RGB", big.size, (20, 30, 90)), (100, 40), mask)  # blue ink where the digit is
    paths.append(tmp / "rgb-on-paper.jpg")
    rgb.save(paths[-1], quality=92)
    return paths


@pytest.mark.integration
def test_predict_matches_the_mnist_original(real_mnist, trained: Path, tmp_path: Path) -> None:
    loaded = load_model(RunRecord(trained))
    originals = real_mnist.held_out_images[:200].numpy()
    probs = predict_images(loaded, originals)
    confident = [i for i in range(200) if probs[i].max() > 0.99][:8]
    assert len(confident) >= 5
    for i in confident:
        expected = int(probs[i].argmax())
        for path in variants(originals[i], tmp_path):
            seen = preprocess(path)
            got = int(predict_images(loaded, seen[None]).argmax())
            assert got == expected, f"test image {i} as {path.name}: {got} instead of {expected}"


def test_predict_cli_json_and_show_input(small_mnist, trained_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    paths = variants(small_mnist.held_out_images[0].numpy(), tmp_path)
    shown = tmp_path / "seen.png"
    assert main(["predict", str(trained_run), *map(str, paths), "--json", "--show-input", str(shown)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    assert all(len(r["top3"]) == 3 and r["top3"][0]["probability"] >= r["top3"][1]["probability"] for r in results)
    assert shown.read_bytes()[:4] == b"\x89PNG"


def test_preprocess_output_is_mnist_like(tmp_path: Path) -> None:
    img = np.full((120, 90), 250, np.uint8)
    img[20:100, 40:52] = 10  # a dark vertical stroke on white: a "1"
    Image.fromarray(img).save(tmp_path / "one.png")
    seen = preprocess(tmp_path / "one.png")
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    rows, cols = np.nonzero(seen > 64)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)  # the larger side scaled to 20 px
    cy = (np.arange(28) @ seen.sum(1)) / seen.sum()
    assert abs(cy - 13.5) < 1.0  # centred on the centre of mass
    assert seen[0].max() == 0 and seen[:, 0].max() == 0  # light background inverted to black


def bomb(path: Path, side: int) -> Path:
    """A 1-bit PNG of side x side pixels, all black: megapixels in a file of kilobytes (a decompression bomb)."""
    Image.new("1", (side, side), 0).save(path, optimize=True)
    return path


@pytest.mark.parametrize("content,message", [
    ("blank", "looks blank"), ("corrupt", "cannot be read"), ("missing", "does not exist"),
    ("truncated", "cannot be read"), ("bomb", "megapixel limit"), ("over the cap", "megapixel limit")])
def test_bad_images(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.png"
    if content == "blank":
        Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    elif content == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif content == "truncated":
        Image.new("L", (64, 64), 128).save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif content == "bomb":
        bomb(path, 30_000)  # 900 megapixels: PIL itself refuses this one, with an exception of its own
    elif content == "over the cap":
        bomb(path, 5_000)  # 25 megapixels: under PIL's own threshold, over tinymnist's
    with pytest.raises(UsageError, match=message):
        preprocess(path)


def stroke(width: int = 120, height: int = 160) -> np.ndarray:
    """A dark vertical stroke (a "1") on light paper, as 0..1 floats."""
    img = np.full((height, width), 0.95)
    img[height // 6: height - height // 6, width // 2 - width // 16: width // 2 + width // 16] = 0.05
    return img


def test_a_16_bit_scan_is_scaled_not_clipped(tmp_path: Path) -> None:
    # A 16-bit grayscale PNG (a scanner's output): its values run to 65,535. Clipped to 8 bits, every pixel
    # above 255 is white and the digit disappears.
    path = tmp_path / "scan16.png"
    Image.fromarray((stroke() * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    eight_bit = tmp_path / "scan8.png"
    Image.fromarray((stroke() * 255).astype(np.uint8)).save(eight_bit)
    assert np.abs(preprocess(path).astype(int) - preprocess(eight_bit).astype(int)).max() <= 2


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n0 setgray 10 4 8 20 rectfill\nshowpage\n"


@pytest.mark.parametrize("kind", ["eps", "dds", "tiff", "gif", "bmp"])
def test_formats_off_the_allow_list_are_refused_before_decoding(kind: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Only PNG and JPEG reach a decoder: an EPS never reaches Ghostscript, a malformed DDS never reaches the DDS
    decoder (a NotImplementedError traceback before), whatever the file is called."""
    from PIL import DdsImagePlugin, EpsImagePlugin
    from PIL import Image as PILImage

    opened: list[str] = []
    for plugin in (EpsImagePlugin.EpsImageFile, DdsImagePlugin.DdsImageFile):
        original = plugin._open

        def spy(self: object, original: object = original, plugin: object = plugin) -> None:
            opened.append(plugin.format)
            original(self)

        monkeypatch.setattr(plugin, "_open", spy)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: opened.append("ghostscript"))
    path = tmp_path / "digit.png"  # the name says PNG; the content says otherwise
    if kind == "eps":
        path.write_bytes(POSTSCRIPT)
    elif kind == "dds":  # a DDS header that announces a pixel format the decoder does not implement
        header = b"DDS " + (124).to_bytes(4, "little") + bytes(72) + (32).to_bytes(4, "little") + \
            (0x4).to_bytes(4, "little") + b"XXXX" + bytes(40)
        header = header[:8] + (8).to_bytes(4, "little") + (8).to_bytes(4, "little") + header[16:]
        path.write_bytes(header + bytes(256))
    else:
        img = PILImage.fromarray((stroke() * 255).astype(np.uint8))
        img.save(path, format=kind.upper())
    with pytest.raises(UsageError, match="not a PNG or JPEG"):
        preprocess(path)
    assert opened == []


def test_reads_are_bounded_by_bytes_read_not_by_the_size_reported(tmp_path: Path) -> None:
    # /dev/zero reports a size of 0 and never ends; it used to be read whole (5.5 GB, then a MemoryError).
    with pytest.raises(UsageError, match="MB limit"):
        preprocess(Path("/dev/zero"))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES))
    with pytest.raises(UsageError, match="MB limit"):
        preprocess(big)


def test_a_fifo_is_read_up_to_the_limit(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    def endless() -> None:  # a writer that would never stop: the reader must stop by itself
        try:
            with open(fifo, "wb") as f:
                while True:
                    f.write(bytes(1 << 16))
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    with pytest.raises(UsageError, match="MB limit"):
        preprocess(fifo)
    writer.join(10)
    assert not writer.is_alive()


def test_large_photos_under_the_cap_are_read_in_bounded_memory(tmp_path: Path) -> None:
    """A JPEG near the pixel cap is decoded at a reduced scale (draft); a PNG is reduced before any float work. The
    digit comes out the same as from a small copy of the same image."""
    import subprocess
    import sys

    side = 4000
    big = Image.fromarray((stroke(side, side) * 255).astype(np.uint8)).convert("RGB")
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"big.{fmt.lower()}"
        big.save(path, format=fmt)
        code = (f"import resource, sys; from pathlib import Path; from tinymnist.use.inference import preprocess; "
                f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; preprocess(Path({str(path)!r})); "
                f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
        grown_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
        assert grown_kb < 200 * 1024, f"{fmt}: {grown_kb / 1024:.0f} MB"  # a full-size float pipeline takes ~300
    small = tmp_path / "small.png"
    big.resize((400, 400)).save(small)
    seen_big, seen_small = preprocess(tmp_path / "big.jpeg"), preprocess(small)
    assert np.abs(seen_big.astype(int) - seen_small.astype(int)).mean() < 8


def test_any_decoder_error_is_one_sentence(tmp_path: Path) -> None:
    # A PNG whose IDAT stream is damaged after a valid header: zlib's error becomes a UsageError.
    import io

    buffer = io.BytesIO()
    Image.fromarray((stroke() * 255).astype(np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = bytes(range(40))
    with pytest.raises(UsageError, match="cannot be read as an image") as info:
        preprocess_bytes(bytes(data), "damaged.png")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.integration
def test_predict_cli_refuses_a_decompression_bomb(trained_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    path = bomb(tmp_path / "huge.png", 30_000)
    assert path.stat().st_size < 2_000_000 and MAX_IMAGE_PIXELS < 30_000 ** 2
    code = main(["predict", str(trained_run), str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "huge.png" in err


def test_predict_cli_on_dev_zero_and_a_malformed_file(trained_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    dds = tmp_path / "x.dds"
    dds.write_bytes(b"DDS " + bytes(200))
    for path in ("/dev/zero", str(dds)):
        code = main(["predict", str(trained_run), path])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and path in err


@pytest.mark.integration
def test_onnx_parity(trained_run: Path, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
    out = tmp_path / "model.onnx"
    code = main(["export", str(trained_run), "--onnx", str(out), "--data-dir", str(mnist_dir)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and "identical predictions" in text
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # the batch dimension is dynamic
        assert session.run(None, {"image": np.zeros((n, 1, 28, 28), np.float32)})[0].shape == (n, 10)
