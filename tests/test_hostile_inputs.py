"""Hostile material found by trying the tool as an attacker would: a study export that names a path or has the
wrong shape, record fields of the wrong type, a FIFO given as an image. Each is one sentence (exit 2), never a
traceback, a hang or a file written outside --runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinymnist.errors import CheckpointError
from tinymnist.runs.records import _from_dict, recipe_from_dict
from tinymnist.training.recipes import Options

ROOT = Path(__file__).resolve().parents[1]


def damaged(export: dict, how: str) -> dict:
    bad = copy.deepcopy(export)
    first = bad["trials"][0]
    if how == "path in the study name":
        bad["study"] = "../../escaped"
    elif how == "a number for the study name":
        bad["study"] = 5
    elif how == "a list for the config":
        bad["config"] = []
    elif how == "a trial without a number":
        del first["number"]
    elif how == "trials that are numbers":
        bad["trials"] = [1, 2]
    elif how == "a number for the model":
        first["recipe"]["model"] = 5
    elif how == "text for the epochs":
        first["recipe"]["epochs"] = "ten"
    return bad


HOW = ["undamaged", "path in the study name", "a number for the study name", "a list for the config",
       "a trial without a number", "trials that are numbers", "a number for the model", "text for the epochs"]


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_study_export_is_one_sentence_and_writes_nothing(how: str, tmp_path: Path,
                                                                  full_synthetic_dir: Path) -> None:
    export = json.loads((ROOT / "evidence" / "studies" / "band-4k-6k.json").read_text())
    export["trials"] = [t for t in export["trials"] if t["number"] == 0]
    export["trials"][0]["recipe"]["model"] = "tiny:w=4.8,pool=1"
    path = tmp_path / "work" / "export.json"
    path.parent.mkdir()
    path.write_text(json.dumps(damaged(export, how) if how != "undamaged" else export))
    out = subprocess.run([sys.executable, "-m", "tinymnist", "search-confirm", str(path), "--trial", "0",
                          "--seed-list", "1001", "--subset", "100", "--epochs", "1", "--runs", str(tmp_path / "runs"),
                          "--data-dir", str(full_synthetic_dir), "--threads", "1"], capture_output=True, text=True,
                         cwd=path.parent)
    if how == "undamaged":  # the control: the same command trains, so the refusals above are the damage's
        assert out.returncode == 0 and (tmp_path / "runs" / "search" / "band-4k-6k").is_dir(), out.stderr
        return
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field, value", [("epochs", "ten"), ("lr", [1]), ("model", 5), ("nesterov", 1),
                                          ("cycle_epochs", "x"), ("ema", True)])
def test_a_recorded_recipe_field_of_the_wrong_type_names_the_field(field: str, value: object) -> None:
    with pytest.raises(CheckpointError, match=f"recipe's {field} is"):
        recipe_from_dict({"model": "compact_7k4", field: value})


def test_recorded_options_of_the_wrong_type_name_the_field() -> None:
    with pytest.raises(CheckpointError, match="threads is 'x'"):
        _from_dict(Options, {"threads": "x"})
    assert _from_dict(Options, {"threads": None, "precision": "fp32"}).precision == "fp32"
    assert recipe_from_dict({"model": "compact_7k4", "lr": 1, "cycle_epochs": None}).lr == 1  # an int is a number


def test_a_fifo_nobody_writes_to_is_one_sentence_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    code = ("import sys\nfrom tinymnist.use.inference import preprocess\nfrom tinymnist.errors import UsageError\n"
            "try:\n    preprocess(sys.argv[1])\nexcept UsageError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and str(fifo) in out.stdout, out.stderr


def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "runs" / "original_step4" / "seed-0"
    shutil.copytree(trained_run, target)
    return target


def test_a_log_line_without_its_epoch_is_one_sentence(trained_run: Path, tmp_path: Path, capsys) -> None:
    from tinymnist.cli.main import main

    run = copy_run(trained_run, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"test_acc": 1.0, "train_acc": "x", "test_loss": None})
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["show", str(run)]) == 2
    assert "metrics.jsonl line 1 is corrupt" in capsys.readouterr().err


def test_a_state_history_without_epochs_is_one_sentence_on_resume(trained_run: Path, tmp_path: Path,
                                                                   mnist_dir: Path, capsys) -> None:
    from tinymnist.cli.main import main

    run = copy_run(trained_run, tmp_path)
    (run / "summary.json").unlink()  # unfinished: --resume reads the checkpoint
    (run / "state.json").write_text(json.dumps({"epoch": 1, "history": [{"x": 1}]}))
    assert main(["train", "--resume", str(run), "--data-dir", str(mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert "state.json is inconsistent" in err and len(err.strip().splitlines()) == 1, err
