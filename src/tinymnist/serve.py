"""An HTTP API and a page to draw a digit on, for one trained run (the [serve] extra: FastAPI on uvicorn).

The model is loaded once, when the app is made. Predictions go through the same code as `tinymnist predict`
(``preprocess_bytes``, then ``predict_images``), so the page, the API and the command line agree. Every error
a client can cause is a 4xx with ``{"error": "one sentence"}``; the server keeps serving.
"""

from __future__ import annotations

import random
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .errors import TinyMnistError
from .inference import MAX_IMAGE_BYTES, predict_images, preprocess_bytes
from .records import RunRecord, load_model

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
    request._body = body  # noqa: SLF001 - Starlette parses the form from the body already read (and capped)
    try:
        form = await request.form()
    except Exception as e:  # noqa: BLE001 - a malformed form is the client's
        raise ClientError(400, f"the multipart form cannot be read ({e}).") from None
    upload = next((v for v in form.values() if hasattr(v, "read")), None)
    if upload is None:
        raise ClientError(400, "the multipart form holds no file; send the image as a file field.")
    return await upload.read()


def create_app(run_dir: str | Path, data_dir: str | Path | None = None, trust: bool = False) -> FastAPI:
    """The app for the run in ``run_dir``; MNIST test images from ``data_dir`` (or the usual places) feed the
    test-digit button when they are there."""
    run = RunRecord(run_dir).require()
    loaded = load_model(run, trust)
    summary = run.summary() if run.finished() else {}
    test_images, test_labels, missing = None, None, None
    try:
        from .data import load_mnist

        data = load_mnist(data_dir, allow_download=False)
        test_images, test_labels = data.test_images.numpy(), data.test_labels.numpy()
    except TinyMnistError as e:
        missing = f"no MNIST test images here ({e})"
    info = {"name": loaded.name, "params": loaded.params, "run": str(run.path),
            "recorded_test_acc": summary.get("last_test_acc"),
            "normalization": {"mean": loaded.mean, "std": loaded.std}, "precision": loaded.precision,
            "test_digits": missing is None, "test_digits_off_because": missing}

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
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict:
        return info

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        seen = preprocess_bytes(await image_bytes(request), "the uploaded image")
        probs = predict_images(loaded, seen[None])[0]
        values, classes = probs.topk(3)
        return {"top3": [{"digit": int(c), "probability": round(float(v), 6)} for v, c in zip(values, classes,
                                                                                              strict=True)],
                "input": seen.tolist()}

    @app.get("/test-digit")
    def test_digit() -> dict:
        if test_images is None:
            raise ClientError(404, f"test digits are off: {missing}")
        index = random.randrange(len(test_labels))
        return {"index": index, "label": int(test_labels[index]), "image": np.asarray(test_images[index]).tolist()}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None,
          trust: bool = False) -> None:
    import uvicorn

    uvicorn.run(create_app(run_dir, data_dir, trust), host=host, port=port, log_level="warning")
