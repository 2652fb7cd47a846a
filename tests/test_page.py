"""The page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) draws digits stroke
by stroke with the mouse on a model trained here on real MNIST; the page must read each as the digit meant, and
say what `tinymnist predict` says about the same canvas saved as PNG."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from conftest import serving, start_run  # noqa: E402
from tinymnist.cli.main import main  # noqa: E402
from tinymnist.runs.runner import train_run  # noqa: E402
from tinymnist.steps.builtin import get_step  # noqa: E402
from tinymnist.training.recipes import Options  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.environ.get("TINYMNIST_SCREENSHOT")  # where to save the README's screenshot, when asked

# Strokes on the 280 x 280 pad, as a person would draw them: lists of points, one list per stroke.
DIGITS = {
    1: [[(140, 45), (140, 235)]],
    7: [[(75, 55), (205, 55), (125, 235)]],
    0: [[(140, 45), (90, 70), (75, 140), (90, 210), (140, 235), (190, 210), (205, 140), (190, 70), (140, 45)]],
    4: [[(170, 45), (80, 165), (210, 165)], [(170, 45), (170, 240)]],
}


@pytest.fixture(scope="module")
def mnist_run(real_mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compact_step3's recipe for 3 epochs on 20,000 real digits: a model that reads handwriting."""
    data = real_mnist.subset(20_000)
    run = start_run(tmp_path_factory.mktemp("page"), "compact_step3",
                    get_step("compact_step3").recipe.with_overrides(epochs=3), data, Options(device="cpu"))
    train_run(run, data)
    return run.path


@pytest.fixture(scope="module")
def server(mnist_run: Path):
    with serving(mnist_run) as url:
        yield url


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_drawn_digits_are_read_and_agree_with_predict(server: str, mnist_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(server)
        page.wait_for_function("document.getElementById('model').textContent.startsWith('Answering')")
        assert "7,432 parameters" in page.inner_text("#model")
        for digit, strokes in DIGITS.items():
            page.click("#clear")
            box = page.locator("#pad").bounding_box()
            for stroke in strokes:
                page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
                page.mouse.down()
                for x, y in stroke[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
                page.mouse.up()
            page.wait_for_function("document.body.dataset.busy === '0' && document.body.dataset.answer !== undefined")
            shown = page.locator("#top3 li").all_inner_texts()
            assert int(page.evaluate("document.body.dataset.answer")) == digit, (digit, shown)
            if SCREENSHOT and digit == 7:
                page.screenshot(path=SCREENSHOT)
            url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
            png = tmp_path / f"canvas-{digit}.png"
            png.write_bytes(base64.b64decode(url.split(",", 1)[1]))
            assert main(["predict", str(mnist_run), str(png), "--json"]) == 0
            top3 = json.loads(capsys.readouterr().out)[0]["top3"]
            assert [line.split()[0] for line in shown] == [str(t["digit"]) for t in top3]
            assert [line.split()[-1] for line in shown] == [f"{100 * t['probability']:.1f}%" for t in top3]
        page.click("#clear")  # no answer on the page: the wait below is for the test digit's own
        page.click("#test-digit")  # a random MNIST test image, drawn on the pad with its label, then read
        page.wait_for_function("document.getElementById('test-label').textContent !== '' && "
                               "document.body.dataset.busy === '0' && document.body.dataset.answer !== undefined")
        assert page.inner_text("#test-label").startswith("MNIST test image ")
        assert page.locator("#top3 li").count() == 3 and page.inner_text("#error") == ""
        browser.close()
