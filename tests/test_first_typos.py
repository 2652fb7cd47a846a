"""A user's first typos and habits: each bad input is one sentence and exit 2, with nothing left behind; the
ecosystem's habits (--version, CSV) work; `show` says what a run trained on."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from conftest import start_run
from tinymnist import __version__
from tinymnist.cli.main import main
from tinymnist.training.recipes import Recipe

ROOT = Path(__file__).resolve().parent.parent


def one_sentence(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("tinymnist: error: ")


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tinymnist {__version__}"


def test_usage_line_names_no_command_twice(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: tinymnist [-h] [--version] COMMAND ..."


@pytest.mark.parametrize(("model", "says"), [("nofile.py:X", "nofile.py does not exist"),
                                              ("mynet.py:Mynet", "Did you mean 'MyNet'?")])
def test_a_wrong_model_file_or_name_leaves_no_run(model: str, says: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    Path("mynet.py").write_text("from torch import nn\n\n\ndef MyNet():\n"
                                "    return nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())\n")
    assert main(["train", model, "--runs", "runs", "--data-dir", str(tmp_path / "no-data"), "--no-download"]) == 2
    out, err = capsys.readouterr()
    assert one_sentence(err) and says in err and out == ""
    assert not Path("runs").exists()


def test_layers_takes_every_name_train_takes(capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", "compact_step4"]) == 0
    by_step = capsys.readouterr().out
    assert main(["layers", "compact_7k4"]) == 0
    assert by_step == capsys.readouterr().out and "7,432" in by_step


def test_show_of_a_run_with_no_epoch_says_so(small_mnist, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    run = start_run(tmp_path, "compact_step4", Recipe(model="compact_7k4", epochs=1, seed=3), small_mnist)
    assert main(["show", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "no completed epoch" in err


def test_show_says_what_the_run_trained_on_and_writes_csv(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "the first 2,000 training images (a subset)" in out and "1,000 test images" in out and "fp32" in out
    assert main(["show", str(trained_run), "--csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and 0 <= float(rows[-1]["test_acc"]) <= 100


def test_predict_answers_the_good_images_and_names_each_bad_one(trained_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from PIL import Image, ImageDraw

    good = tmp_path / "four.png"
    image = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(image).line([(60, 10), (25, 60), (80, 60), (60, 10), (60, 90)], fill=0, width=8)
    image.save(good)
    (tmp_path / "notimage.png").write_text("not a picture")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    code = main(["predict", str(trained_run), str(good), str(tmp_path / "notimage.png"), str(tmp_path / "blank.png")])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith(f"{good}: ") and len(out.splitlines()) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "notimage.png" in lines[0] and "blank.png" in lines[1]
    assert "Traceback" not in err and "BytesIO" not in err


def test_results_out_writes_the_file_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.md"
    assert main(["results", "--runs", str(ROOT / "evidence" / "runs"), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert len(printed.strip().splitlines()) == 1 and str(out) in printed and out.read_text().startswith("# ")
    assert err == ""  # the project's own records carry today's names: no rename note


def test_a_rename_note_is_shown_once_a_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"  # a 0.1.0 record: an old step name and an old model name
    shutil.copytree(ROOT / "tests" / "fixtures" / "legacy_run" / "run", run)
    assert main(["show", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "is now called" in err


def test_a_refused_search_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("optuna", reason="the [search] extra is not installed")
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--max-params", "10"]) == 2
    out, err = capsys.readouterr()
    assert one_sentence(err) and out == "" and list(tmp_path.iterdir()) == []


def test_tensorboard_gets_every_epoch(small_mnist, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tinymnist.runs.logsinks import TensorBoardSink
    from tinymnist.runs.runner import train_run

    run = start_run(tmp_path / "runs", "compact_step4", Recipe(model="compact_7k4", epochs=2, seed=3), small_mnist)
    train_run(run, small_mnist, sinks=(TensorBoardSink(tmp_path / "tb"),))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy/test")] == [1, 2]
    assert {"loss/train", "loss/test", "accuracy/train", "lr", "seconds"} <= set(events.Tags()["scalars"])


def test_steps_fits_a_terminal(capsys: pytest.CaptureFixture) -> None:
    assert main(["steps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 14 and max(len(line) for line in lines) <= 80


def test_a_teacher_is_recorded_and_a_bad_one_refused(trained_run: Path, mnist_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    import json

    args = ["train", "compact_step4", "--epochs", "1", "--subset", "300", "--data-dir", str(mnist_dir), "--no-download"]
    assert main([*args, "--runs", str(tmp_path / "bad"), "--teacher", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tinymnist: error: ")]
    assert "Traceback" not in err and len(errors) == 1 and "is not a run directory" in errors[0]
    assert not (tmp_path / "bad").exists()
    assert main([*args, "--runs", str(tmp_path / "runs"), "--teacher", str(trained_run), "--quiet"]) == 0
    header = json.loads((tmp_path / "runs" / "compact_step4" / "seed-1" / "recipe.json").read_text())
    assert header["recipe"]["teacher"] == str(trained_run) and header["overrides"]["teacher"] == str(trained_run)
    assert main(["show", str(tmp_path / "runs" / "compact_step4" / "seed-1")]) == 0
