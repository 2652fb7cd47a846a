"""The image reader under mutated files (Hypothesis): whatever the bytes, an answer (a 28x28 uint8 image) or one
UsageError sentence, never another exception, and memory bounded by the pixel cap, not by what a header claims."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tinymnist.errors import UsageError
from tinymnist.use.inference import preprocess_bytes

hypothesis = pytest.importorskip("hypothesis", reason="the [dev] extra is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def seeds() -> list[bytes]:
    """A digit saved as the modes and formats people send: PNG in 1, L, LA, P, RGB, RGBA and 16-bit; JPEG in L,
    RGB, CMYK and progressive."""
    ink = np.full((48, 40), 235, np.uint8)
    ink[8:40, 17:23] = 20
    base = Image.fromarray(ink)
    out = []
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        buffer = io.BytesIO()
        base.convert(mode).save(buffer, "PNG")
        out.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(ink.astype(np.uint16) * 257).save(buffer, "PNG")
    out.append(buffer.getvalue())
    for mode, extra in (("L", {}), ("RGB", {}), ("CMYK", {}), ("RGB", {"progressive": True})):
        buffer = io.BytesIO()
        base.convert(mode).save(buffer, "JPEG", quality=90, **extra)
        out.append(buffer.getvalue())
    for fmt in ("TIFF", "DDS", "GIF"):  # off the allow-list: refused whatever their bytes say
        buffer = io.BytesIO()
        base.convert("RGB" if fmt == "DDS" else "L").save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = seeds()


def with_ihdr(png: bytes, width: int, height: int) -> bytes:
    """``png`` whose header claims width x height (CRC made good, so only the claim is false)."""
    body = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + png[33:]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "claim"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        side = st.integers(0, 70_000)
        data = bytearray(with_ihdr(bytes(data), draw(side), draw(side)))
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_image_gives_an_answer_or_one_sentence(data: bytes) -> None:
    try:
        seen = preprocess_bytes(data, "upload.png")
    except UsageError as e:
        assert len(str(e).splitlines()) == 1 and str(e).startswith("upload.png ")
    else:
        assert seen.shape == (28, 28) and seen.dtype == np.uint8


def test_memory_stays_bounded_whatever_the_header_claims() -> None:
    """Headers that claim up to 70,000 x 70,000 pixels over a few bytes of data are refused; a real RGBA PNG at the
    cap (4096 x 4096, 64 MiB decoded) costs its decode and little more: the float work runs on a reduced copy."""
    import subprocess
    import sys

    png = SEEDS[5]  # RGBA
    rng = np.random.default_rng(0)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(1, 70_000, 2))
        with pytest.raises(UsageError):
            preprocess_bytes(with_ihdr(png, width, height), "claim.png")
    code = """
import io, resource, sys
import numpy as np
from PIL import Image, ImageDraw
from tinymnist.use.inference import MAX_IMAGE_PIXELS, preprocess_bytes
side = int(MAX_IMAGE_PIXELS ** 0.5)
img = Image.new("RGBA", (side, side), (255, 255, 255, 0))
ImageDraw.Draw(img).line((side // 2, side // 6, side // 2, side - side // 6), fill=(0, 0, 0, 255), width=side // 12)
buffer = io.BytesIO()
img.save(buffer, "PNG", compress_level=1)
data = buffer.getvalue()
del img
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seen = preprocess_bytes(data)
assert seen.max() == 255
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    grown_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 150, f"decoding one image at the cap grew the peak by {grown_mb:.0f} MB"
