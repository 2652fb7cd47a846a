"""Models as students write them (tests/fixtures/students: course notebooks, the PyTorch example, blog tutorials),
each taken through everything a student does: its layer table gives the receptive field worked out by hand in
its docstring; it trains one epoch on a subset through the CLI; eval, predict and the exports (ONNX, int8, the
page) agree, and the page's ten probabilities sum to 100%."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_deploy import NODE, page_answers
from tinymnist.cli.main import main

STUDENTS = Path(__file__).resolve().parent / "fixtures" / "students"
# The final receptive field (side, in input pixels) worked out by hand in each file's docstring.
BY_HAND = {"convblocks": 28, "lenet": 28, "linear_head": 40, "torch_flatten": 36, "nn_flatten": 26,
           "padding_gap": 40, "mean_head": 28, "strided": 25}


def test_the_corpus_is_what_the_hand_worked_figures_cover() -> None:
    assert sorted(p.stem for p in STUDENTS.glob("*.py")) == sorted(BY_HAND)
    for name, side in BY_HAND.items():  # the docstring says how, and ends on the same figure
        doc = (STUDENTS / f"{name}.py").read_text().split('"""')[1]
        assert f"{side}" in re.split(r"\|", doc)[-1], name


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_layers_gives_the_hand_worked_receptive_field(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", f"{STUDENTS / name}.py:Net"]) == 0
    out = capsys.readouterr().out
    side = BY_HAND[name]
    assert out.strip().splitlines()[-1].endswith(f"final receptive field {side}x{side} px")
    model = student(name)
    total = sum(p.numel() for p in model.parameters())
    assert f"total: {total:,} params" in out


def student(name: str) -> torch.nn.Module:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"student_{name}", STUDENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net()


def _run(runs: Path) -> Path:
    found = [p.parent for p in runs.rglob("summary.json")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_a_students_model_trains_evaluates_predicts_and_exports_alike(name: str, mnist_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from tinymnist.data import load_mnist
    from tinymnist.runs.loading import load_model
    from tinymnist.runs.records import RunRecord
    from tinymnist.training.engine import model_inputs
    from tinymnist.use.deploy import onnx_predictions
    from tinymnist.use.inference import predict_images, preprocess

    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(mnist_dir)]
    assert main(["train", f"{STUDENTS / name}.py:Net", "--epochs", "1", "--subset", "2000", "--runs", "runs",
                 *data]) == 0
    run = _run(Path("runs"))
    capsys.readouterr()
    assert main(["eval", str(run), *data]) == 0  # the recorded test accuracy, recomputed from the weights
    assert "matches the recorded" in capsys.readouterr().out

    images = load_mnist(mnist_dir, allow_download=False).held_out_images[:4].numpy()
    pngs = []
    for i, image in enumerate(images):
        Image.fromarray(image).resize((112, 112)).save(png := tmp_path / f"digit-{i}.png")
        pngs.append(str(png))
    assert main(["predict", str(run), *pngs, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    seen = np.stack([preprocess(Path(p)) for p in pngs])  # what predict fed the model

    assert main(["export", str(run), "--onnx", "model.onnx", "--int8", "--web", "page", *data]) == 0
    out = capsys.readouterr().out
    assert "identical predictions" in out  # fp32 ONNX against PyTorch on 1,000 test images
    record = json.loads(Path("model.int8.onnx.json").read_text())
    # one epoch on 2,000 images leaves a model of 40-95%: many near-ties, which int8 rounding may flip
    assert record["agreement"] > 0.8 and abs(record["int8_test_acc"] - record["fp32_test_acc"]) < 5

    loaded = load_model(RunRecord(run))
    probs = predict_images(loaded, seen).numpy()
    x = model_inputs(loaded.mean, loaded.std)(torch.from_numpy(seen)).numpy()
    onnx_probs = torch.softmax(torch.from_numpy(onnx_predictions(Path("model.onnx"), x)), 1).numpy()
    assert np.abs(onnx_probs - probs).max() < 1e-4
    for answer, p in zip(said, probs, strict=True):
        assert answer["top3"][0]["digit"] == int(p.argmax())
    if NODE is not None:  # the page, as a browser runs it
        for answer, p in zip(page_answers(Path("page"), seen, tmp_path), probs, strict=True):
            assert abs(sum(answer["probabilities"]) - 1) < 1e-6 and abs(sum(answer["shown"]) - 100) <= 0.5
            assert np.abs(np.asarray(answer["probabilities"]) - p).max() < 1e-4
