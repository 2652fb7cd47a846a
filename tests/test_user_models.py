"""A user's own model file: building it, its errors, and runs that stay reproducible when the file changes."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tinymnist.cli.main import main
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


@pytest.mark.integration
def test_a_quick_look_at_one_epoch_scales_the_lr_cycle_with_a_note(model_file: Path, mnist_dir: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """The default recipe (compact_step4's) ends its LR cycle with epoch 11 of 15; --epochs 1 used to be refused."""
    from tinymnist.runs.records import RunRecord

    code = main(["train", f"{model_file}:TinyNet", "--epochs", "1", "--subset", "500", "--device", "cpu",
                 "--data-dir", str(mnist_dir), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if "LR cycle" in line] == [
        "tinymnist: note: this recipe's LR cycle spans 11 of its 15 epochs; with 1 epoch it spans 1 (scaled to the "
        "same share)."]
    run = RunRecord(tmp_path / "runs" / "user" / "my_models" / "TinyNet" / "seed-1")
    assert [m["epoch"] for m in run.metrics()] == [1] and run.recipe().cycle_epochs == 1 and run.finished()


@pytest.mark.parametrize("change", ["deleted", "edited"])
@pytest.mark.integration
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


@pytest.mark.integration
def test_an_unchanged_file_needs_no_switch(user_run: Path, mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert "matches the recorded" in main_output(["eval", str(user_run), "--data-dir", str(mnist_dir)], capsys)


# --- the starter and journey files ---------------------------------------------------------------------------

@pytest.mark.integration
def test_the_starter_trains_exactly_as_the_original_steps(small_mnist, tmp_path: Path) -> None:
    from conftest import fit
    from tinymnist.steps.builtin import get_journey, get_step
    from tinymnist.training.recipes import Options

    assert main(["init", str(tmp_path / "mine")]) == 0
    strip = lambda h: [{k: v for k, v in m.items() if "seconds" not in k} for m in h]  # noqa: E731
    data = small_mnist.subset(600, 500)
    for n, step in enumerate(get_journey(str(tmp_path / "mine" / "journey.toml")), 1):
        original = get_step(f"original_step{n}").recipe.with_overrides(epochs=1, seed=5)
        mine = step.recipe.with_overrides(epochs=1, seed=5)
        assert mine.model.endswith(f"models.py:Step{n}")
        assert strip(fit(mine, data, Options(device="cpu"))) == strip(fit(original, data, Options(device="cpu")))


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["init", str(tmp_path)]) == 0
    assert main(["init", str(tmp_path)]) == 2
    assert "already has models.py, journey.toml, README.md" in capsys.readouterr().err


def journey(steps: str, recipe: str = "") -> str:
    base = "".join(f'[[step]]\nname = "s{i}"\nmodel = "my_models.py:TinyNet"\ntarget = "t{i}"\n' for i in range(1, 4))
    return recipe + base + steps


GOOD_STEP = '[[step]]\nname = "s4"\nmodel = "my_models.py:TinyNet"\ntarget = "t4"\nanalysis = "mine"\n'
BAD_JOURNEYS = {
    "unknown step key": (journey(GOOD_STEP + "epoch = 3\n"), "unknown key 'epoch' in step 4; did you mean 'epochs'?"),
    "unknown recipe key": (journey(GOOD_STEP, "[recipe]\nlearning_rate = 0.1\n"), "unknown key 'learning_rate'"),
    "unknown top key": ("[journey]\nname = 'x'\n" + journey(GOOD_STEP), "unknown key 'journey' in the journey"),
    "bad value": (journey(GOOD_STEP + "epochs = 0\n"), "step 4: epochs must be at least 1 (got 0)"),
    "wrong type": (journey(GOOD_STEP + 'lr = "fast"\n'), "step 4 sets lr = 'fast'; it must be a number"),
    "three steps": (journey(""), "has 3 [[step]] tables; a journey has exactly four"),
    "no model": (journey('[[step]]\nname = "s4"\ntarget = "t"\n'), "step 4 needs model"),
    "not toml": ("[[step]\n", "is not valid TOML"),
    "bad schedule": (journey(GOOD_STEP + 'schedule = "cosine"\n'), "unknown schedule 'cosine'"),
}


@pytest.mark.parametrize("case", BAD_JOURNEYS)
def test_bad_journey_files_get_one_sentence_and_exit_2(case: str, model_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    text, words = BAD_JOURNEYS[case]
    path = tmp_path / "j.toml"
    path.write_text(text)
    code = main(["report", str(path), "--data-dir", str(tmp_path / "no-data"), "--no-download"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and str(path) in lines[0], lines


def test_a_good_journey_file_reads_into_steps(model_file: Path, tmp_path: Path) -> None:
    from tinymnist.steps.builtin import get_journey

    path = tmp_path / "j.toml"
    path.write_text(journey(GOOD_STEP + "lr = 0.05\n", "[recipe]\nepochs = 3\n"))
    steps = get_journey(str(path))
    assert [s.name for s in steps] == [f"user/j/s{i}" for i in range(1, 5)]
    assert steps[3].recipe.lr == 0.05 and steps[0].recipe.lr == 0.01 and {s.recipe.epochs for s in steps} == {3}
    assert steps[3].recipe.model == f"{model_file.resolve()}:TinyNet"
    from tinymnist.steps.journey_file import journey_entries

    assert journey_entries(path).entries[3].analysis == "mine"


# --- the guide's "Your own model" section, command by command ------------------------------------------------

ROOT = Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "guide.md"
# The only changes from the guide: a subset and a few epochs (the guide's are full trainings; the journey gets
# 5, the others 2), two fresh seeds instead of ten, and the example image and data given by absolute path.
QUICK = {"train": ["--subset", "1000", "--epochs", "2"],
         "consistency": ["--subset", "1000", "--epochs", "2", "--last-k", "2"], "report": ["--subset", "1000"]}


def readme_section() -> tuple[str, str, list[list[str]]]:
    """The model file, the journey file and the commands of the guide's "Your own model" section."""
    import re
    import shlex

    text = GUIDE.read_text()
    start = text.index("## Your own model")
    blocks = re.findall(r"```(python|toml|bash)\n(.*?)```", text[start:text.index("\n## ", start + 5)], re.S)
    model = next(body for kind, body in blocks if kind == "python" and body.startswith("# my_models.py"))
    journey_file = next(body for kind, body in blocks if kind == "toml")
    commands = [shlex.split(line, comments=True) for line in
                next(body for kind, body in blocks if kind == "bash").splitlines() if line.strip()]
    return model, journey_file, commands


@pytest.mark.integration
def test_the_readme_your_own_model_section_works(mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    model, journey_file, commands = readme_section()
    monkeypatch.chdir(tmp_path)
    Path("my_models.py").write_text(model)
    Path("my_journey.toml").write_text(journey_file.replace("epochs = 15", "epochs = 5")
                                       .replace("cycle_epochs = 11", "cycle_epochs = 4"))
    assert [c[:2] for c in commands] == [["tinymnist", "layers"], ["tinymnist", "train"], ["tinymnist", "consistency"],
                                         ["tinymnist", "report"], ["tinymnist", "eval"], ["tinymnist", "predict"],
                                         ["tinymnist", "export"]]
    printed = {}
    for command in commands:
        name, args = command[1], command[2:]
        args = [str(ROOT / a) if a.startswith("docs/examples/") else a for a in args]
        if name == "consistency":
            args[args.index("--seeds") + 1] = "2"
        if name == "export" and importlib.util.find_spec("onnxruntime") is None:
            continue
        data = ["--data-dir", str(mnist_dir)] if name not in ("layers", "predict") else []
        code = main([name, *args, *QUICK.get(name, []), *data, *(["--device", "cpu"] if name in QUICK else [])])
        out, err = capsys.readouterr()
        assert code == 0, (command, err)
        printed[name] = out
    run = Path("runs/user/my_models/Net")
    assert sorted(p.name for p in run.iterdir()) == ["seed-1", "seed-1001", "seed-1002"]
    assert (run / "seed-1" / "model.py").read_text() == model
    assert "total: 3,778 params" in printed["layers"] and "targets NOT met" in printed["train"]
    assert "95% interval" in printed["consistency"] and "matches the recorded" in printed["eval"]
    report = Path("my_report/report.md").read_text()
    assert all(f"`{name}`" in report for name in ("plain", "onecycle", "augmented", "held"))
    assert "**Analysis** (the author's).\n\nMy own reading of the numbers goes here." in report
    journey_copy = Path("runs/user/my_journey/held/seed-1/journey.toml")
    assert journey_copy.read_text() == Path("my_journey.toml").read_text()
    assert printed["predict"].startswith(str(ROOT / "docs/examples/three.png"))
