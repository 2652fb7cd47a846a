"""The run record: its schema, records of earlier versions, file modes, one writer at a time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_run
from tinymnist.cli.main import main
from tinymnist.errors import UsageError
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.training.recipes import Recipe

# Lines later versions print before what earlier ones printed, and nothing else changed: `show` says what the
# run trained on, `train` introduces the training (model, recipe, data, the columns).
ADDED = re.compile(r"^(\S+: model .*|trained on .*|model: .*|recipe: .*|data: .*|columns: .*)\n", re.M)


def without_timing(text: str) -> str:
    """Output with the seconds column, wall times and the run's own path masked, and the lines added since
    the fixtures were written left out."""
    text = re.sub(r"\s+\d+\.\d$", " S", text, flags=re.M)  # last column of an epoch row: seconds
    text = re.sub(r"\d+ s wall", "N s wall", text)
    return ADDED.sub("", re.sub(r"run directory: .*", "run directory: DIR", text))


FIXTURES = Path(__file__).parent / "fixtures"
# (directory, the old-name note its show and resume print): runs written by earlier versions, with what they printed
WRITTEN_BEFORE = {"legacy_run": "step 'valid_step2' is now called 'compact_step2'", "run_0_2_0": None}


@pytest.mark.parametrize("fixture", sorted(WRITTEN_BEFORE))
@pytest.mark.integration
def test_a_run_of_an_earlier_version_shows_resumes_and_evaluates_as_it_did(
        fixture: str, tmp_path: Path, full_synthetic_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """tests/fixtures/*/ hold a run written by an earlier version and what that version printed for the same
    commands on it (their README.md says how each was made)."""
    written, note = FIXTURES / fixture, WRITTEN_BEFORE[fixture]
    copy = Path(shutil.copytree(written / "run", tmp_path / "copy"))

    def printed(*argv: str) -> str:
        assert main(list(argv)) == 0
        out, err = capsys.readouterr()
        if note and argv[0] != "eval":
            assert note in err
        return without_timing(out)

    expected = {name: without_timing((written / f"{name}.txt").read_text())
                for name in ("show-before", "resume", "show-after", "eval")}
    assert printed("show", str(written / "run")) == expected["show-before"]
    assert printed("train", "--resume", str(copy), "--data-dir", str(full_synthetic_dir)) == expected["resume"]
    assert printed("show", str(copy)) == expected["show-after"]
    assert printed("eval", str(copy), "--data-dir", str(full_synthetic_dir)) == expected["eval"]


def test_run_dir_is_the_one_layout() -> None:
    assert run_dir("runs", "compact_step4", 7) == Path("runs/compact_step4/seed-7")
    assert run_dir("runs", "user/my_journey/step1", 7) == Path("runs/user/my_journey/step1/seed-7")


def test_files_get_the_mode_the_umask_gives(small_mnist, tmp_path: Path) -> None:
    from tinymnist.runs.runner import train_run

    old = os.umask(0o022)
    try:
        run = start_run(tmp_path, "original_step4", Recipe(model="original_step4", epochs=1, seed=0), small_mnist)
        train_run(run, small_mnist)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.path.iterdir()}
    assert set(modes) >= {"recipe.json", "metrics.jsonl", "weights.safetensors", "summary.json", "state.json"}
    assert set(modes.values()) == {0o644}, modes


HOLD = """
import sys, time
from tinymnist.runs.records import RunRecord
with RunRecord(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run = RunRecord(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"is being written by process {holder.pid} "), run.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock():  # the lock died with its process: no stale lock to clean up
        pass


@pytest.mark.integration
def test_resume_while_the_run_trains_elsewhere_exits_2(small_mnist, tmp_path: Path, full_synthetic_dir: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = start_run(tmp_path, "original_step4", Recipe(model="original_step4", epochs=2, seed=0), small_mnist)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        code = main(["train", "--resume", str(run.path), "--data-dir", str(full_synthetic_dir)])
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"process {holder.pid}" in err and len(err.strip().splitlines()) == 1
    assert run.metrics() == []  # nothing was written by the refused writer


def test_a_new_run_records_the_precision_it_resolved_and_an_earlier_auto_keeps_its_meaning(
        small_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'auto' is fp32 now, and a header never records it; a header that says 'auto' (written by 0.3.0 or
    earlier) resumes in what 'auto' meant then: bf16 on hardware with native bf16, else fp32."""
    import dataclasses
    import json

    from conftest import CPU
    from tinymnist import machine

    run = start_run(tmp_path, "compact_step1", Recipe(model="compact_7k4", epochs=1, seed=3), small_mnist,
                    dataclasses.replace(CPU, precision="auto"))
    header = json.loads((run.path / "recipe.json").read_text())
    assert header["options"]["precision"] == "fp32"
    assert run.options().precision == "fp32"

    header["options"]["precision"], header["schema"] = "auto", 3  # as 0.3.0 wrote it
    (run.path / "recipe.json").write_text(json.dumps(header))
    monkeypatch.setattr(machine, "native_bf16", lambda device: True)
    run = RunRecord(run.path)  # a record is read once
    assert run.options().precision == "bf16"
    monkeypatch.setattr(machine, "native_bf16", lambda device: False)
    assert RunRecord(run.path).options().precision == "fp32"


def test_a_new_run_records_the_compile_setting_it_resolved_and_an_earlier_run_resumes_uncompiled(
        small_mnist, tmp_path: Path) -> None:
    """--compile auto resolves when the run is created (a 2,000-image epoch is too short to compile), and a header
    from before --compile existed resumes as it trained: uncompiled, whatever 'auto' would say now."""
    import json

    from conftest import CPU

    run = start_run(tmp_path, "compact_step1", Recipe(model="compact_7k4", epochs=1, seed=3), small_mnist, CPU)
    header = json.loads((run.path / "recipe.json").read_text())
    assert header["options"]["compile"] == "off" and run.options().compile == "off"
    header["options"]["compile"] = "on"
    (run.path / "recipe.json").write_text(json.dumps(header))
    assert RunRecord(run.path).options().compile == "on"
    del header["options"]["compile"]  # as 0.4.0 wrote it
    header["schema"] = 3
    (run.path / "recipe.json").write_text(json.dumps(header))
    assert run.options().compile == "off"
