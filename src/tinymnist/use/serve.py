"""An HTTP API and a page to draw a digit on, for one trained run (the [serve] extra: FastAPI on uvicorn).

The model is loaded once, when the app is made. Predictions go through the same code as `tinymnist predict`
(``preprocess_bytes``, then ``predict_images``), so the page, the API and the command line agree. Every error
a client can cause is a 4xx with ``{"error": "one sentence"}``; the server keeps serving. Reading the upload is
asynchronous (its size is capped as it streams in); decoding the image and running the model block, so they
run in the thread pool, off the event loop.
"""

from __future__ import annotations

import random
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from tinymnist.errors import TinyMnistError
from tinymnist.runs.loading import load_model
from tinymnist.runs.records import RunRecord
from tinymnist.use.inference import MAX_IMAGE_BYTES, predict_images, preprocess_bytes

MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # the image cap, plus room for a multipart envelope


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
    run: str
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


def create_app(run_dir: str | Path, data_dir: str | Path | None = None, trust: bool = False) -> FastAPI:
    """The app for the run in ``run_dir``; MNIST test images from ``data_dir`` (or the usual places) feed the
    test-digit button when they are there."""
    run = RunRecord(run_dir).require()
    loaded = load_model(run, trust)
    summary = run.summary() if run.finished() else {}
    test_images, test_labels, missing = None, None, None
    try:
        from tinymnist.data import load_mnist

        data = load_mnist(data_dir, allow_download=False)
        test_images, test_labels = data.held_out_images.numpy(), data.held_out_labels.numpy()
    except TinyMnistError as e:
        missing = f"no MNIST test images here ({e})"
    info = ModelInfo(name=loaded.name, params=loaded.params, run=str(run.path),
                     recorded_test_acc=summary.get("last_test_acc"),
                     normalization=Normalization(mean=loaded.mean, std=loaded.std), precision=loaded.precision,
                     test_digits=missing is None, test_digits_off_because=missing)

    app = FastAPI(title="tinymnist", docs_url="/api/docs", openapi_url="/api/openapi.json")
    static = files("tinymnist") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(ClientError)
    async def client_error(request: Request, e: ClientError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(TinyMnistError)
    async def bad_input(request: Request, e: TinyMnistError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (static / "index.html").read_text()

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/model")
    def model() -> ModelInfo:
        return info

    def classify(image: bytes) -> Prediction:  # blocking: decoding up to 50 megapixels, then the model
        seen = preprocess_bytes(image, "the uploaded image")
        values, classes = predict_images(loaded, seen[None])[0].topk(3)
        return Prediction(top3=[Digit(digit=int(c), probability=round(float(v), 6))
                                for v, c in zip(values, classes, strict=True)], input=seen.tolist())

    @app.post("/predict")
    async def predict(request: Request) -> Prediction:
        return await run_in_threadpool(classify, await image_bytes(request))

    @app.get("/test-digit")
    def test_digit() -> TestDigit:
        if test_images is None:
            raise ClientError(404, f"test digits are off: {missing}")
        index = random.randrange(len(test_labels))
        return TestDigit(index=index, label=int(test_labels[index]), image=np.asarray(test_images[index]).tolist())

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None,
          trust: bool = False) -> None:
    import uvicorn

    uvicorn.run(create_app(run_dir, data_dir, trust), host=host, port=port, log_level="warning")
