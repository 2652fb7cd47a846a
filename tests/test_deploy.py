"""Deploying small: the layer program the static page runs (against PyTorch, through Node when it is installed),
the web folder in Chromium from disk, the int8 export, and the bad inputs of `tinymnist export`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import start_run
from tinymnist.cli.main import main
from tinymnist.errors import Note, UsageError
from tinymnist.models import create_model, list_models
from tinymnist.runs.runner import train_run
from tinymnist.steps.builtin import get_step
from tinymnist.training.recipes import Options
from tinymnist.use.deploy import layer_program

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "src" / "tinymnist" / "web"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE_FORWARD = """
const T = require(process.argv[2]), fs = require("fs");
const model = T.load(JSON.parse(fs.readFileSync(process.argv[3], "utf8")));
const px = new Uint8Array(fs.readFileSync(process.argv[4])), out = [];
for (let i = 0; i < px.length / 784; i++) out.push(Array.from(T.forward(model, px.subarray(784 * i, 784 * (i + 1)))));
console.log(JSON.stringify(out));
"""

# The exported page's own scripts (tinymnist.js, model.js, page.js) in Node, with a stand-in for the few DOM calls
# page.js makes: `show` draws the ten rows exactly as in a browser, and what they say comes back.
PAGE_IN_NODE = """
const vm = require("vm"), fs = require("fs"), path = require("path");
const folder = process.argv[2], images = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
class Element {
  constructor() { this.style = {}; this.dataset = {}; this.children = []; this.textContent = ""; this.width = 280;
                  this.height = 280; this._html = ""; }
  set innerHTML(v) { this._html = v; this.children = []; }
  get innerHTML() { return this._html + this.children.map(c => c.innerHTML).join(""); }
  appendChild(c) { this.children.push(c); }
  addEventListener() {}
  setPointerCapture() {}
  getBoundingClientRect() { return {left: 0, top: 0, width: 280, height: 280}; }
  getContext() {
    return new Proxy({}, {get: (t, k) => k in t ? t[k] : k === "createImageData"
      ? (w, h) => ({data: new Uint8ClampedArray(4 * w * h)}) : () => {}});
  }
}
const elements = {};
const context = {document: {getElementById: id => elements[id] || (elements[id] = new Element()),
                            createElement: () => new Element(), body: new Element()},
                 requestAnimationFrame: f => f(), performance: {now: () => 0}, atob};
context.window = context;
vm.createContext(context);
for (const name of ["tinymnist.js", "model.js", "page.js"])
  vm.runInContext(fs.readFileSync(path.join(folder, name), "utf8"), context, {filename: name});
context.images = images;
console.log(JSON.stringify(vm.runInContext(`images.map(px => {
  show(px, TinyMNIST.forward(model, px));
  const shown = document.getElementById("probs").innerHTML.match(/[0-9.]+%/g).map(t => parseFloat(t));
  return {probabilities: window.tinymnistLast.probabilities, shown};
})`, context)));
"""


def page_answers(folder: Path, images: np.ndarray, tmp_path: Path) -> list[dict]:
    """What the exported page in ``folder`` shows for uint8 images (N, 28, 28): per image its ten probabilities and
    the ten percentages it prints."""
    (tmp_path / "page-in-node.js").write_text(PAGE_IN_NODE)
    (tmp_path / "images.json").write_text(json.dumps(images.reshape(len(images), 784).tolist()))
    out = subprocess.run([NODE, str(tmp_path / "page-in-node.js"), str(folder), str(tmp_path / "images.json")],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


class UserNet(nn.Module):
    """A model with a forward of its own: a convolution, dropout, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.drop, self.fc = nn.Conv2d(1, 4, 5, stride=2, padding=1), nn.BatchNorm2d(4), \
            nn.Dropout(0.2), nn.Linear(4 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return torch.log_softmax(self.fc(self.drop(x.view(x.size(0), -1))), dim=1)


def with_statistics(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine weights, so that folding them is tested, not skipped."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
    return model.eval()


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("name", [*list_models(), "tiny:w=8.16.24.24.24.24,pool=2,sep=2", "user"])
def test_the_pages_forward_pass_matches_pytorch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = with_statistics(UserNet() if name == "user" else create_model(name))
    mean, std = 0.1307, 0.3081
    program = {"mean": mean, "std": std, "layers": layer_program(model, name)}
    # every BatchNorm folds into the convolution before it, but Conv-ReLU-BN's (original_step4's)
    assert any(layer["op"] == "affine" for layer in program["layers"]) == (name == "original_step4")
    (tmp_path / "model.json").write_text(json.dumps(program))
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    images.numpy().tofile(tmp_path / "images.bin")
    (tmp_path / "forward.js").write_text(NODE_FORWARD)
    out = subprocess.run([NODE, str(tmp_path / "forward.js"), str(WEB / "tinymnist.js"), str(tmp_path / "model.json"),
                          str(tmp_path / "images.bin")], capture_output=True, text=True, check=True).stdout
    with torch.no_grad():
        expected = model(((images.float() / 255 - mean) / std).unsqueeze(1))
    assert torch.allclose(torch.tensor(json.loads(out)), expected, atol=1e-4)


def test_a_layer_the_page_cannot_run_is_named() -> None:
    residual = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())
    with pytest.raises(UsageError, match="GELU"):
        layer_program(residual, "mine.py:Net")


@pytest.fixture(scope="module")
def compact_run(small_mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compact_step4's model and recipe for one epoch on the small data: Conv-BN-ReLU, BatchNorm to fold."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Note)  # the LR cycle scaled to one epoch
        recipe = get_step("compact_step4").recipe.with_overrides(epochs=1)
    run = start_run(tmp_path_factory.mktemp("deploy"), "compact_step4", recipe, small_mnist, Options(device="cpu"))
    train_run(run, small_mnist)
    return run.path


def one_sentence(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_export_refuses_a_folder_that_is_not_empty(compact_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "notes.txt").write_text("mine")
    assert main(["export", str(compact_run), "--web", str(tmp_path / "page")]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "not an empty folder" in err
    assert [p.name for p in (tmp_path / "page").iterdir()] == ["notes.txt"]


def test_export_refuses_a_run_with_no_weights(compact_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(compact_run, run)
    (run / "weights.safetensors").unlink()
    assert main(["export", str(run), "--web", str(tmp_path / "page")]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "no weights" in err and not (tmp_path / "page").exists()


def test_export_of_a_users_model_with_a_layer_the_page_cannot_run(small_mnist, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    Path("mynet.py").write_text("from torch import nn\n\n\ndef Net():\n    return nn.Sequential(nn.Conv2d(1, 4, 3), "
                                "nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    from tinymnist.training.recipes import Recipe

    run = start_run(tmp_path / "runs", "mynet", Recipe(model="mynet.py:Net", epochs=1, seed=1), small_mnist.subset(200))
    train_run(run, small_mnist.subset(200))
    assert main(["export", str(run.path), "--web", "page"]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "GELU" in err and not Path("page").exists()


def test_export_needs_something_to_write(compact_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(compact_run)]) == 2
    assert one_sentence(capsys.readouterr().err)


@pytest.mark.integration
def test_int8_export_is_small_and_keeps_its_accuracy(compact_run: Path, mnist_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from tinymnist.use.deploy import node_ops

    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(compact_run), "--int8", str(out), "--data-dir", str(mnist_dir)]) == 0
    text = capsys.readouterr().out
    record = json.loads(Path(f"{out}.json").read_text())
    assert f"{record['int8_bytes']:,} bytes" in text and "full test set" in text
    assert record["int8_bytes"] < 16 * 1024 and record["int8_bytes"] < 0.7 * record["fp32_bytes"]
    assert record["images"] == 10_000 and record["agreement"] > 0.9  # a one-epoch model; the flagship: docs/deploy.md
    assert abs(record["int8_test_acc"] - record["fp32_test_acc"]) < 2
    ops = node_ops(out)
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") >= 7  # folded; activations quantized


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_exported_page_runs_from_disk_and_agrees_with_predict(compact_run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from tinymnist.runs.loading import load_model
    from tinymnist.runs.records import RunRecord
    from tinymnist.use.inference import predict_images

    folder = tmp_path / "page"
    assert main(["export", str(compact_run), "--web", str(folder)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "model.js", "page.js", "style.css",
                                                        "tinymnist.js"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(folder.as_uri() + "/index.html")
        page.wait_for_function("document.body.dataset.ready !== undefined")
        assert "7,432 parameters" in page.inner_text("#model")
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + 75, box["y"] + 55)
        page.mouse.down()
        for x, y in ((205, 55), (125, 235)):
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()
        page.wait_for_function("window.tinymnistLast && document.body.dataset.answer !== undefined")
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        last = page.evaluate("window.tinymnistLast")
        shown = page.locator("#probs li").all_inner_texts()
        png = base64.b64decode(page.evaluate("document.getElementById('pad').toDataURL('image/png')").split(",")[1])
        browser.close()
    assert all(url.startswith("file://") for url in requests)  # nothing but the folder itself
    assert len(shown) == 10 and len(last["pixels"]) == 784 and max(last["pixels"]) > 0
    pixels = np.asarray(last["pixels"], dtype=np.uint8).reshape(1, 28, 28)
    expected = predict_images(load_model(RunRecord(compact_run)), pixels)[0].numpy()
    assert np.abs(expected - np.asarray(last["probabilities"])).max() < 1e-5  # the same pixels, the same answer
    (tmp_path / "canvas.png").write_bytes(png)
    assert main(["predict", str(compact_run), str(tmp_path / "canvas.png"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top3"][0]["digit"]
    assert top == int(np.argmax(last["probabilities"])) == int(expected.argmax())



LOGITS_MODEL = """import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))  # raw logits
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_shows_probabilities_for_a_model_that_returns_logits(small_mnist, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from tinymnist.runs.loading import load_model
    from tinymnist.runs.records import RunRecord
    from tinymnist.training.recipes import Recipe
    from tinymnist.use.inference import predict_images

    monkeypatch.chdir(tmp_path)
    Path("logits.py").write_text(LOGITS_MODEL)
    data = small_mnist.subset(200)
    run = start_run(tmp_path / "runs", "logits", Recipe(model="logits.py:Net", epochs=1, seed=1), data)
    train_run(run, data)
    assert main(["export", str(run.path), "--web", "page"]) == 0
    capsys.readouterr()
    images = data.held_out_images[:5].numpy()
    expected = predict_images(load_model(RunRecord(run.path)), images).numpy()
    for answer, probs in zip(page_answers(Path("page"), images, tmp_path), expected, strict=True):
        assert abs(sum(answer["probabilities"]) - 1) < 1e-6 and abs(sum(answer["shown"]) - 100) <= 0.5
        assert np.abs(np.asarray(answer["probabilities"]) - probs).max() < 1e-4  # as `predict` says
        assert answer["shown"] == [round(100 * p, 1) for p in answer["probabilities"]]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be written in: chmod 555, or for root (whom permissions do not stop) /sys, which the
    kernel refuses new files in."""
    import os

    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("flag", ["--onnx", "--int8", "--web"])
def test_an_output_that_cannot_be_written_is_one_sentence(flag: str, compact_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    target = read_only_folder(tmp_path) / ("page" if flag == "--web" else "model.onnx")
    assert main(["export", str(compact_run), flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and flag in err and "cannot write" in err and not target.exists()


def test_a_missing_folder_or_a_folder_for_a_file_is_one_sentence(compact_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(compact_run), "--onnx", str(tmp_path / "no" / "such" / "m.onnx")]) == 2
    assert one_sentence(err := capsys.readouterr().err) and "does not exist" in err
    assert main(["export", str(compact_run), "--int8", str(tmp_path)]) == 2
    assert one_sentence(err := capsys.readouterr().err) and "is a folder" in err


@pytest.mark.integration
def test_onnx_and_int8_are_written_beside_the_file_named_each_one_file(compact_run: Path, mnist_dir: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from tinymnist.use.deploy import onnx_predictions

    (tmp_path / "cwd").mkdir()
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["export", str(compact_run), "--onnx", "../out/model.onnx", "--int8", "--data-dir",
                 str(mnist_dir)]) == 0
    capsys.readouterr()
    assert list(Path().iterdir()) == []  # nothing in the current folder
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.int8.onnx", "model.int8.onnx.json",
                                                                    "model.onnx"]
    shared = tmp_path / "shared"  # each file alone, elsewhere, still runs: no FILE.data beside it
    shared.mkdir()
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    for name in ("model.onnx", "model.int8.onnx"):
        (shared / name).write_bytes((tmp_path / "out" / name).read_bytes())
        assert onnx_predictions(shared / name, x).shape == (2, 10)


def test_the_fp32_onnx_is_one_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
    from tinymnist.use.deploy import onnx_predictions
    from tinymnist.use.inference import export_onnx

    torch.manual_seed(0)
    model = with_statistics(create_model("compact_7k4"))
    (tmp_path / "here").mkdir()
    export_onnx(model, tmp_path / "here" / "m.onnx")
    assert [p.name for p in (tmp_path / "here").iterdir()] == ["m.onnx"]  # no m.onnx.data to lose
    (tmp_path / "here" / "m.onnx").rename(tmp_path / "m.onnx")  # shared alone, it still runs, and the same
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(onnx_predictions(tmp_path / "m.onnx", x.numpy()) - expected).max() < 1e-4
