"""The HTTP API: predictions equal `tinymnist predict`, and every bad upload is a 4xx with one sentence while the
server keeps serving. (The page in a real browser and the load test come with the [serve] extra too.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient

from conftest import serving
from tinymnist.cli.main import main
from tinymnist.use.serve import MAX_BODY_BYTES, create_app


def png(draw: bool = True, size: int = 200) -> bytes:
    img = Image.new("L", (size, size), 255)
    if draw:
        ImageDraw.Draw(img).line((size // 2, size // 6, size // 2, size - size // 6), fill=0, width=size // 10)
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(trained_run: Path, mnist_dir: Path) -> TestClient:
    return TestClient(create_app(trained_run, mnist_dir))


def test_model_health_and_test_digit(client: TestClient, trained_run: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["name"] == "original_step4" and info["params"] == 8066 and info["test_digits"]
    assert info["recorded_test_acc"] == json.loads((trained_run / "summary.json").read_text())["last_test_acc"]
    digit = client.get("/test-digit").json()
    assert 0 <= digit["label"] <= 9 and len(digit["image"]) == 28 and len(digit["image"][0]) == 28
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and client.get("/static/app.js").status_code == 200


def test_a_prediction_equals_tinymnist_predict(client: TestClient, trained_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "one.png"
    image.write_bytes(png())
    assert main(["predict", str(trained_run), str(image), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["top3"]
    raw = client.post("/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"}).json()
    form = client.post("/predict", files={"image": ("one.png", image.read_bytes(), "image/png")}).json()
    assert raw["top3"] == expected and form["top3"] == expected
    assert len(raw["input"]) == 28 and max(max(row) for row in raw["input"]) == 255


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000), 0).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


ABUSE = {
    "empty body": (b"", 422, "is empty"),
    "not an image": (b"hello, I am text", 422, "cannot be read as an image"),
    "truncated PNG": (png()[:80], 422, "cannot be read as an image"),
    "blank image": (png(draw=False), 422, "looks blank"),
    "decompression bomb": (None, 422, "megapixel limit"),
    "over the size cap": (b"\x89PNG" + b"\0" * (MAX_BODY_BYTES + 10), 413, "limit"),
}


@pytest.mark.parametrize("case", ABUSE)
def test_bad_uploads_get_a_4xx_and_one_sentence(case: str, client: TestClient) -> None:
    body, status, words = ABUSE[case]
    response = client.post("/predict", content=bomb() if body is None else body,
                           headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == status and words in response.json()["error"], response.text
    assert len(response.json()["error"].splitlines()) == 1
    assert client.get("/healthz").status_code == 200


def test_a_multipart_form_without_a_file(client: TestClient) -> None:
    response = client.post("/predict", files={"note": (None, "no file")})  # a multipart text field only
    assert response.status_code == 400 and "holds no file" in response.json()["error"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_a_chunked_upload_over_the_cap_on_a_real_server(trained_run: Path, mnist_dir: Path) -> None:
    """No Content-Length: the cap must hold while the body streams in."""
    import httpx

    with serving(trained_run, "--data-dir", str(mnist_dir)) as url:
        chunk = b"\0" * 65536

        def body():  # a generator: httpx sends it chunked, with no Content-Length
            for _ in range(MAX_BODY_BYTES // len(chunk) + 4):
                yield chunk

        response = httpx.post(f"{url}/predict", content=body(), timeout=30)
        assert response.status_code == 413 and "limit" in response.json()["error"]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        ok = httpx.post(f"{url}/predict", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["top3"]) == 3


@pytest.mark.integration
def test_under_load_no_errors_and_no_growth(trained_run: Path) -> None:
    """2,000 requests from 16 concurrent clients on loopback after a 200-request warm-up (bench/bench_serve.py):
    no errors, and the server's RSS while serving requests 1,000-2,000 stays within 20 MB of its RSS after the
    warm-up."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serve", Path(__file__).parents[1] / "bench" / "bench_serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(str(trained_run), requests=2000, clients=16, warmup=200)
    assert result["errors"] == 0 and len(result["rss_samples_mb"]) >= 10
    assert result["rss_max_drift_mb"] <= 20, result["rss_samples_mb"]
