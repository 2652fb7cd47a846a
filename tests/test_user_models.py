"""A user's own model file: building it, its errors, and runs that stay reproducible when the file changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinymnist.cli import main
from tinymnist.models import count_params, create_model

# Unlike the starter and the built-in models: an nn.Module that is not an nn.Sequential, with a linear head
# returning logits (tinymnist applies log_softmax).
MODEL = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def wide():
    return nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())
'''


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(MODEL)
    return path


def test_a_class_or_a_factory_builds_and_returns_log_probabilities(model_file: Path) -> None:
    import torch

    for name, params in (("TinyNet", 80 + 1168 + 170), ("wide", 7850)):
        model = create_model(f"{model_file}:{name}")
        assert count_params(model) == params
        assert torch.allclose(model(torch.randn(4, 1, 28, 28)).exp().sum(1), torch.ones(4), atol=1e-5)


BAD_FILES = {
    # case: (file text, model name, words the one sentence must hold)
    "syntax error": ("def broken(:\n    pass\n", "Net", "line 1: syntax error"),
    "missing name": (MODEL, "TinyNte", "Did you mean 'TinyNet'"),
    "not a module": (MODEL + "\ndef notmodel():\n    return 3\n", "notmodel", "returned int, not a torch.nn.Module"),
    "wrong output shape": (MODEL + "\ndef five():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))\n",
                           "five", "to (2, 5); it must return (N, 10)"),
    "raises on import": ("raise RuntimeError('no GPU here')\n", "Net", "failed to import (RuntimeError: no GPU here)"),
    "local import": ("import helpers\nfrom torch import nn\n", "Net", "imports 'helpers' from a file beside it"),
    "relative import": ("from . import helpers\n", "Net", "a relative import; keep the model in one file"),
    "needs arguments": (MODEL + "\nclass Args(nn.Module):\n    def __init__(self, width):\n"
                        "        super().__init__()\n", "Args", "must build with no arguments"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_model_files_get_one_sentence_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, name, words = BAD_FILES[case]
    (tmp_path / "helpers.py").write_text("WIDTH = 8\n")
    path = tmp_path / f"bad_{case.replace(' ', '_')}.py"
    path.write_text(text)
    code = main(["layers", f"{path}:{name}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], lines


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", f"{tmp_path / 'nowhere.py'}:Net"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture
def user_run(model_file: Path, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """A 2-epoch run of TinyNet (stopped after epoch 1 of 2 and resumed: a copy is kept before the end)."""
    args = ["train", f"{model_file}:TinyNet", "--recipe", "original_step4", "--epochs", "2", "--subset", "500",
            "--device", "cpu", "--data-dir", str(mnist_dir), "--runs", str(tmp_path / "runs")]
    assert main(args) == 0
    capsys.readouterr()
    return tmp_path / "runs" / "user" / "my_models" / "TinyNet" / "seed-121"


@pytest.mark.parametrize("change", ["deleted", "edited"])
def test_a_run_outlives_its_model_file_only_with_the_switch(change: str, user_run: Path, model_file: Path,
                                                            mnist_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    assert (user_run / "model.py").read_text() == MODEL
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (60, 60), 0).save(image)
    from PIL import ImageDraw

    with Image.open(image) as img:
        ImageDraw.Draw(img).line((30, 10, 30, 50), fill=255, width=6)
        img.save(image)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(user_run, interrupted)
    (interrupted / "summary.json").unlink()  # as if stopped at its last checkpoint
    if change == "deleted":
        model_file.unlink()
    else:
        model_file.write_text(MODEL.replace("16, 10", "16, 10, bias=False"))
    data = ["--data-dir", str(mnist_dir)]
    commands = {
        "eval": ["eval", str(user_run), *data],
        "predict": ["predict", str(user_run), str(image)],
        "export": ["export", str(user_run), "--onnx", str(tmp_path / "m.onnx"), *data],
        "resume": ["train", "--resume", str(interrupted), *data],
    }
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "--trust-remote-code" in err and "model.py" in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    for name, argv in commands.items():
        code = main([*argv, "--trust-remote-code"])
        out, err = capsys.readouterr()
        assert code == 0, (name, err)
    assert "matches the recorded" in main_output(["eval", str(interrupted), *data, "--trust-remote-code"], capsys)


def main_output(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_an_unchanged_file_needs_no_switch(user_run: Path, mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert "matches the recorded" in main_output(["eval", str(user_run), "--data-dir", str(mnist_dir)], capsys)
