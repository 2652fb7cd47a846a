"""An HTTP API and a page to draw a digit on, for one trained run (the [serve] extra: FastAPI on uvicorn).

The model is loaded once, when the app is made. Predictions go through the same code as `tinymnist predict`
(``preprocess_bytes``, then ``predict_images``), so the page, the API and the command line agree. Every error
a client can cause is a 4xx with ``{"error": "one sentence"}`` (404, 405 and the server's own 500 too); the
server keeps serving. What comes in is bounded: the Host header must name this server (a page on another site
cannot reach a loopback server through DNS rebinding), the upload's size is capped as it streams in, at most
``max_pending`` uploads are admitted at once (the rest: 503) and at most ``max_decodes`` large images are decoded
at once, in the thread pool, off the event loop. Answers never name a path on the server
(docs/threat-model.md).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
import socket
from collections.abc import Iterable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tinymnist import __version__
from tinymnist.errors import DataError, TinyMnistError, UsageError
from tinymnist.runs.loading import LoadedModel, load_model
from tinymnist.runs.records import RunRecord
from tinymnist.use.inference import MAX_IMAGE_BYTES, image_pixels, predict_images, preprocess_bytes

MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # the image cap, plus room for a multipart envelope
# Uploads admitted at once (read, waiting or decoding): their bodies in memory stay under 32 x 10 MiB. More are
# answered 503 before their body is read.
MAX_PENDING = 32
# Large images decoded at once: one at the pixel cap is a 64 MiB RGBA decode (tests/test_images_fuzz.py measures
# it). Images of at most SMALL_PIXELS (a drawn digit, a cropped photo: 4 MiB as RGBA) skip this queue, so that a few
# large uploads do not hold up everyone else; the thread pool bounds them.
MAX_DECODES = 2
SMALL_PIXELS = 1024 * 1024
DECODE_WAIT_SECONDS = 10  # an admitted upload waits this long at most for a decoder, then 503
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_capped(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes MAX_BODY_BYTES, announced or not (chunked)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ClientError(413, f"the upload is {int(declared):,} bytes, over the {MAX_BODY_BYTES:,}-byte limit.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ClientError(413, f"the upload passed the {MAX_BODY_BYTES:,}-byte limit.")
    return bytes(body)


async def image_bytes(request: Request) -> bytes:
    """The image of a POST /predict: the raw body, or the first file of a multipart form."""
    body = await read_capped(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict:  # the body already read (and capped), handed to a new Request to parse
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as e:  # a malformed form is the client's
        raise ClientError(400, f"the multipart form cannot be read ({e}).") from None
    upload = next((v for v in form.values() if hasattr(v, "read")), None)
    if upload is None:
        raise ClientError(400, "the multipart form holds no file; send the image as a file field.")
    return await upload.read()


def host_name(header: str) -> str:
    """The host of a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names a server bound to ``bound`` answers: the loopback names, the bound address unless it is a
    wildcard (0.0.0.0, ::), and ``extra`` ('*' answers any)."""
    names = set(LOOPBACK_NAMES) | {host_name(h) for h in extra}
    try:
        wildcard = ipaddress.ip_address(bound.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        names.add(host_name(bound))
    return frozenset(names)


class Digit(BaseModel):
    digit: int
    probability: float


class Prediction(BaseModel):
    top3: list[Digit]
    input: list[list[int]]  # the 28x28 image the model saw (uint8)


class Normalization(BaseModel):
    mean: float
    std: float


class ModelInfo(BaseModel):
    name: str
    params: int
    run: str  # the run's step and seed folders, not its place on the server
    recorded_test_acc: float | None
    normalization: Normalization
    precision: str
    test_digits: bool
    test_digits_off_because: str | None


class TestDigit(BaseModel):
    index: int
    label: int
    image: list[list[int]]


class Health(BaseModel):
    status: str


def load_test_digits(data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images and labels only (7.8 MB; the training files are never read); never
    downloads."""
    from tinymnist.data import data_dir as where
    from tinymnist.data import locate, read_idx

    found = locate(where(data_dir))
    if found["test_images"] is None or found["test_labels"] is None:
        raise DataError("the MNIST test files are not there")
    images, labels = read_idx(found["test_images"], "images"), read_idx(found["test_labels"], "labels")
    if len(images) != len(labels):
        raise DataError("the MNIST test images and labels do not belong together")
    return images, labels


def create_app(run_dir: str | Path, data_dir: str | Path | None = None, trust: bool = False,
               hosts: Iterable[str] = ("127.0.0.1",), max_pending: int = MAX_PENDING,
               max_decodes: int = MAX_DECODES, decode_wait: float = DECODE_WAIT_SECONDS) -> FastAPI:
    """The app for the run in ``run_dir``; MNIST test images from ``data_dir`` (or the usual places) feed the
    test-digit button when they are there. ``hosts``: the bound address and any other names the Host header may
    give (see ``allowed_hosts``)."""
    run = RunRecord(run_dir).require()
    loaded = load_model(run, trust)
    summary = run.summary() if run.finished() else {}
    test_images, test_labels, missing = None, None, None
    try:
        test_images, test_labels = load_test_digits(data_dir)
    except TinyMnistError:  # its message names a server path: the page gets a sentence without one
        missing = "the server has no MNIST test images (start it with --data-dir DIR, or set TINYMNIST_DATA)"
    info = ModelInfo(name=loaded.name, params=loaded.params, run=f"{run.path.parent.name}/{run.path.name}",
                     recorded_test_acc=summary.get("last_test_acc"),
                     normalization=Normalization(mean=loaded.mean, std=loaded.std), precision=loaded.precision,
                     test_digits=missing is None, test_digits_off_because=missing)
    hosts = list(hosts)
    allowed = allowed_hosts(hosts[0], hosts[1:]) if hosts else frozenset(LOOPBACK_NAMES)

    # No API docs page: Swagger UI would be fetched from a CDN (blank offline, and code from elsewhere); the
    # OpenAPI description itself is served.
    app = FastAPI(title="tinymnist", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    static = files("tinymnist") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _add_host_check(app, allowed)
    _add_error_handlers(app)
    _add_info_routes(app, static, info)
    _add_predict(app, loaded, max_pending, max_decodes, decode_wait)
    _add_test_digit(app, test_images, test_labels, missing)

    return app


def _add_host_check(app: FastAPI, allowed: frozenset[str]) -> None:
    """A request whose Host header does not name this server: 400 (no DNS rebinding)."""

    @app.middleware("http")
    async def check_host(request: Request, call_next: object) -> object:
        host = host_name(request.headers.get("host", ""))
        if "*" not in allowed and host not in allowed:
            shown = host[:60].encode("ascii", "replace").decode()
            return JSONResponse({"error": f"this server does not answer to the host {shown!r}; open it as "
                                          f"http://127.0.0.1, or start it with --allow-host {shown or 'NAME'}."},
                                status_code=400)
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error a client can cause, and the server's own, as {"error": "one sentence"}."""

    @app.exception_handler(ClientError)
    async def client_error(request: Request, e: ClientError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(TinyMnistError)
    async def bad_input(request: Request, e: TinyMnistError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = (f"there is nothing at {request.url.path[:80]}; the API is POST /predict, GET /model, "
                       f"GET /test-digit and GET /healthz.")
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:80]}; see GET /api/openapi.json."
        else:
            message = f"{e.detail}." if isinstance(e.detail, str) else "the request cannot be answered."
        return JSONResponse({"error": message}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "the request does not have the shape this endpoint takes; see "
                                      "GET /api/openapi.json."}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:  # a bug of ours: no details leak out
        return JSONResponse({"error": "the server failed on this request (a bug in tinymnist; its log says "
                                      "more)."}, status_code=500)


def _add_info_routes(app: FastAPI, static: Traversable, info: ModelInfo) -> None:
    """The page, the health check and the model's description."""

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (static / "index.html").read_text()

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/model")
    def model() -> ModelInfo:
        return info


def _add_predict(app: FastAPI, loaded: LoadedModel, max_pending: int, max_decodes: int, decode_wait: float) -> None:
    """POST /predict: at most ``max_pending`` uploads admitted, at most ``max_decodes`` large ones decoded at once."""
    pending = 0
    decoders = asyncio.Semaphore(max_decodes)

    def classify(image: bytes) -> Prediction:  # blocking: decoding up to the pixel cap, then the model
        seen = preprocess_bytes(image, "the uploaded image")
        values, classes = predict_images(loaded, seen[None])[0].topk(3)
        return Prediction(top3=[Digit(digit=int(c), probability=round(float(v), 6))
                                for v, c in zip(values, classes, strict=True)], input=seen.tolist())

    @app.post("/predict")
    async def predict(request: Request) -> Prediction:
        nonlocal pending
        if pending >= max_pending:  # before the body is read: what waits here is bounded in memory
            raise ClientError(503, f"the server is busy with {pending} uploads; try again in a moment.")
        pending += 1
        try:
            image = await image_bytes(request)
            if not image or await run_in_threadpool(image_pixels, image, "the uploaded image") <= SMALL_PIXELS:
                return await run_in_threadpool(classify, image)
            try:
                await asyncio.wait_for(decoders.acquire(), decode_wait)
            except TimeoutError:
                raise ClientError(503, "the server is busy decoding other large images; try again in a "
                                       "moment.") from None
            try:
                return await run_in_threadpool(classify, image)
            finally:
                decoders.release()
        finally:
            pending -= 1


def _add_test_digit(app: FastAPI, test_images: np.ndarray | None, test_labels: np.ndarray | None,
                    missing: str | None) -> None:
    """GET /test-digit: a random MNIST test image and its label, when the server has them."""

    @app.get("/test-digit")
    def test_digit() -> TestDigit:
        if test_images is None:
            raise ClientError(404, f"test digits are off: {missing}.")
        index = random.randrange(len(test_labels))
        return TestDigit(index=index, label=int(test_labels[index]), image=np.asarray(test_images[index]).tolist())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or one sentence saying why there cannot be one."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port; give a number from 1 to 65535.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"--host {host} is not an address of this machine; give 127.0.0.1 (the default) or an "
                         f"address it has.") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use (another server?); stop it or choose "
                             f"another with --port.") from None
        raise UsageError(f"cannot listen on {host} port {port} ({e.strerror}); choose another --host or "
                         f"--port.") from None
    return sock


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on the socket ``bind`` gave until interrupted."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
