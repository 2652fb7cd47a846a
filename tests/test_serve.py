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
from tinymnist import __version__
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
    return TestClient(create_app(trained_run, mnist_dir, hosts=["127.0.0.1", "testserver"]))


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
    "not an image": (b"hello, I am text", 422, "is not a PNG or JPEG"),
    "a malformed DDS": (b"DDS " + bytes(200), 422, "is not a PNG or JPEG"),
    "an EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n", 422, "is not a PNG or JPEG"),
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


@pytest.mark.parametrize("method,path,status", [("GET", "/no-such-page", 404), ("GET", "/predict", 405),
                                                ("DELETE", "/model", 405)])
def test_every_error_has_one_body_shape(client: TestClient, method: str, path: str, status: int) -> None:
    response = client.request(method, path)
    assert response.status_code == status and list(response.json()) == ["error"], response.text
    assert len(response.json()["error"].splitlines()) == 1


def test_answers_name_no_server_path(trained_run: Path, tmp_path: Path) -> None:
    """/model names the run by its step and seed folders; with no MNIST test files, the reason the test digits
    are off names no folder of the server either."""
    app = create_app(trained_run, tmp_path / "no-mnist-here", hosts=["testserver"])
    with TestClient(app) as local:
        info, digit = local.get("/model").json(), local.get("/test-digit")
    assert info["run"] == f"{trained_run.parent.name}/{trained_run.name}" and not info["test_digits"]
    for text in (json.dumps(info), digit.text):
        assert str(tmp_path) not in text and str(trained_run.parent) not in text, text
    assert digit.status_code == 404 and list(digit.json()) == ["error"]


def test_no_docs_page_from_a_cdn_and_the_package_version(client: TestClient) -> None:
    assert client.get("/api/docs").status_code == 404 and client.get("/api/redoc").status_code == 404
    assert client.get("/api/openapi.json").json()["info"]["version"] == __version__
    for path in ("/", "/static/app.js"):
        assert "http://" not in client.get(path).text.replace("http://127.0.0.1", "")
        assert "https://" not in client.get(path).text


@pytest.mark.parametrize("host,status", [("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
                                         ("attacker.example:8000", 400), ("127.0.0.1.attacker.example", 400),
                                         ("", 400)])
def test_the_host_header_must_name_this_server(trained_run: Path, host: str, status: int) -> None:
    """DNS rebinding: a page from attacker.example whose name now resolves to 127.0.0.1 sends its own name."""
    local = TestClient(create_app(trained_run, hosts=["127.0.0.1"]))
    response = local.get("/model", headers={"host": host})
    assert response.status_code == status, response.text
    if status == 400:
        assert "does not answer to the host" in response.json()["error"]


def test_allow_host_and_a_wildcard_bind(trained_run: Path) -> None:
    from tinymnist.use.serve import allowed_hosts

    assert "digits.lan" in allowed_hosts("0.0.0.0", ["digits.lan:8000"])
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0") and "192.168.1.5" in allowed_hosts("192.168.1.5")
    local = TestClient(create_app(trained_run, hosts=["0.0.0.0", "*"]))
    assert local.get("/healthz", headers={"host": "anything.example"}).status_code == 200


def test_test_digits_need_only_the_test_files(trained_run: Path, tmp_path: Path) -> None:
    """The button shows MNIST test images: the 60,000 training images are never loaded for it."""
    from conftest import idx_bytes, synthetic_digits

    images, labels = synthetic_digits(50, 3)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    local = TestClient(create_app(trained_run, tmp_path, hosts=["testserver"]))
    assert local.get("/model").json()["test_digits"]
    digit = local.get("/test-digit").json()
    assert digit["image"] == images[digit["index"]].tolist() and digit["label"] == labels[digit["index"]]


def test_uploads_past_the_bound_are_answered_503(trained_run: Path) -> None:
    """One upload admitted at a time: while a slow client holds it, the next gets a 503 and one sentence; once it
    is done, the server answers again. A real server, in this process."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(trained_run, max_pending=1), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        body = png()
        slow = socket.create_connection(("127.0.0.1", port))  # announces the whole body, sends half of it
        slow.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        for _ in range(100):  # until the server has admitted the slow upload (a fast one may pass before it)
            busy = httpx.post(f"{url}/predict", content=body, timeout=10)
            if busy.status_code != 200:
                break
        assert busy.status_code == 503 and "busy" in busy.json()["error"], busy.text
        slow.sendall(body[len(body) // 2:])
        answer = b""
        while b"top3" not in answer and (chunk := slow.recv(65536)):
            answer += chunk
        slow.close()
        assert b"top3" in answer
        assert httpx.post(f"{url}/predict", content=body, timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def test_large_decodes_are_bounded_and_small_ones_pass(trained_run: Path) -> None:
    """No decoder slot for large images (max_decodes=0): an image over a megapixel waits, then gets a 503 and one
    sentence; a drawn digit does not queue behind large ones and is answered."""
    local = TestClient(create_app(trained_run, hosts=["testserver"], max_decodes=0, decode_wait=0.05))
    large = local.post("/predict", content=png(size=1500), headers={"Content-Type": "image/png"})
    assert large.status_code == 503 and "busy decoding other large images" in large.json()["error"]
    assert local.post("/predict", content=png(), headers={"Content-Type": "image/png"}).status_code == 200


def test_port_problems_are_one_sentence(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    assert main(["serve", str(trained_run), "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert "99999" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "already in use" in err and len(err.strip().splitlines()) == 1 and "serving" not in out


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
