"""Resume after a crash, atomic and validated records, and a parser that only ever raises DataError."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import idx_bytes, synthetic_digits
from tinymnist.cli.main import main
from tinymnist.data import read_idx
from tinymnist.errors import CheckpointError, DataError, Note
from tinymnist.files import write_atomic
from tinymnist.runs.loading import load_weights
from tinymnist.runs.records import RunRecord


# One thread: the same arithmetic in every process, and no contention with the test runner's own threads.
def train_args(epochs: int) -> list[str]:
    return ["train", "original_step3", "--subset", "2000", "--epochs", str(epochs), "--device", "cpu", "--threads", "1"]


def cli(*args: str, data: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A test runner started in the background inherits an ignored SIGINT, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition, as in a terminal.
    return subprocess.Popen([sys.executable, "-m", "tinymnist", *args, "--data-dir", str(data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def records(run: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    metrics = [{k: v for k, v in m.items() if "seconds" not in k} for m in RunRecord(run).metrics()]
    return metrics, load_file(run / "weights.safetensors")


def wait_for_rows(proc: subprocess.Popen, n: int) -> None:
    """Read the command's output until it has printed ``n`` epoch rows: a row is printed after its epoch's
    checkpoint is written, so the run then holds at least ``n`` epochs."""
    rows = 0
    for line in proc.stdout:
        rows += bool(re.match(r"\s*(\d+\s+)?\d+\s+\d+\.\d{4}\s", line))
        if rows >= n:
            return
    raise AssertionError(f"the command ended before epoch {n}: {proc.communicate()}")


@pytest.mark.integration
@pytest.mark.parametrize("ema", [[], ["--ema", "0.99"]], ids=["raw", "weight-average"])
def test_sigkill_mid_epoch_then_resume_is_identical(ema: list[str], full_synthetic_dir: Path, tmp_path: Path) -> None:
    train = [*train_args(4), *ema]
    whole = cli(*train, "--out", str(tmp_path / "whole"), data=full_synthetic_dir)
    assert whole.wait(300) == 0, whole.communicate()
    killed_dir = tmp_path / "killed"
    run = killed_dir / "original_step3" / "seed-121"
    proc = cli(*train, "--out", str(killed_dir), data=full_synthetic_dir)
    wait_for_rows(proc, 1)
    proc.send_signal(signal.SIGKILL)  # somewhere after epoch 1's checkpoint, before the run's end
    proc.wait()
    done = len(RunRecord(run).metrics())
    assert 1 <= done < 4 and not (run / "summary.json").exists()
    resumed = cli("train", "--resume", str(run), data=full_synthetic_dir)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a, b = records(tmp_path / "whole" / "original_step3/seed-121"), records(run)
    assert a[0] == b[0]  # identical per-epoch metrics
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])  # identical weights


@pytest.mark.integration
def test_ctrl_c_leaves_a_resumable_run(full_synthetic_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "original_step3/seed-121"
    proc = cli(*train_args(12), "--out", str(tmp_path), data=full_synthetic_dir)
    wait_for_rows(proc, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
    assert f"tinymnist train --resume {run}" in out
    resumed = cli("train", "--resume", str(run), data=full_synthetic_dir)
    assert resumed.wait(300) == 0
    assert [m["epoch"] for m in RunRecord(run).metrics()] == list(range(1, 13))


@pytest.fixture
def finished_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished original_step4 run, to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))


@pytest.mark.parametrize("damage", ["torn", "empty", "missing"])
def test_a_finished_runs_damaged_log_is_repaired_from_its_state_and_says_so(finished_run: Path, damage: str) -> None:
    path = finished_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    if damage == "missing":
        path.unlink()
    else:
        path.write_text({"torn": lines[0] + "\n" + lines[1][:17], "empty": ""}[damage])
    with pytest.warns(Note, match="rewrote it"):
        assert len(RunRecord(finished_run).metrics()) == len(lines)
    assert path.read_text().splitlines() == lines


def test_a_torn_line_the_state_does_not_hold_is_left_out_with_a_note_and_a_corrupt_one_reported(
        finished_run: Path) -> None:
    path = finished_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    (finished_run / "state.json").unlink()
    path.write_text(lines[0] + "\n" + lines[1][:17])
    with pytest.warns(Note, match="torn line"):
        assert [m["epoch"] for m in RunRecord(finished_run).metrics()] == [1]
    path.write_text("{not json\n" + lines[1] + "\n")
    with pytest.raises(CheckpointError, match="line 1 is corrupt"):
        RunRecord(finished_run).metrics()


def test_the_next_checkpoint_rewrites_a_torn_log_whole(finished_run: Path) -> None:
    path = finished_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:17])
    run = RunRecord(finished_run)
    tensors, history = run.load_checkpoint("original_step4")
    run.save_checkpoint("original_step4", tensors, history)
    assert path.read_text().splitlines() == lines


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_weights_give_checkpoint_error(finished_run: Path, damage: str) -> None:
    path = finished_run / "weights.safetensors"
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": os.urandom(300), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(path, "original_step4")


def test_wrong_model_and_wrong_shapes(finished_run: Path, tmp_path: Path) -> None:
    path = finished_run / "weights.safetensors"
    with pytest.raises(CheckpointError, match="holds weights of model 'original_step4', not 'original_step3'"):
        load_weights(path, "original_step3")
    tensors = load_file(path)
    first = next(iter(tensors))
    tensors[first] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata={"model": "original_step4"})
    with pytest.raises(CheckpointError, match="expects"):
        load_weights(bad, "original_step4")
    del tensors[first]
    save_file(tensors, bad, metadata={"model": "original_step4"})
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(bad, "original_step4")


@pytest.mark.integration
def test_resume_with_corrupt_checkpoint_exits_2(finished_run: Path, full_synthetic_dir: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (finished_run / "summary.json").unlink()  # make it look interrupted
    (finished_run / "state.safetensors").write_bytes(b"\x00" * 50)
    code = main(["train", "--resume", str(finished_run), "--data-dir", str(full_synthetic_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "corrupt" in err and "Traceback" not in err


def test_write_atomic_never_leaves_a_torn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b'{"epoch": 1}')

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(target, b'{"epoch": 2, "history": [...]}')
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


def test_nothing_unpickles() -> None:
    import re

    unpickling = re.compile(r"^\s*(import pickle|from pickle)|pickle\.loads?\(|torch\.load\(|weights_only=False", re.M)
    src = Path(__file__).parents[1] / "src" / "tinymnist"
    for path in src.rglob("*.py"):
        assert not unpickling.search(path.read_text()), path


# --- the IDX parser under random bytes: DataError or a valid array, nothing else ----------------

GOOD_IMAGES = idx_bytes(synthetic_digits(3, 0)[0])
GOOD_LABELS = idx_bytes(synthetic_digits(3, 0)[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(
    st.binary(max_size=4000),
    st.builds(lambda n: GOOD_IMAGES[:n], st.integers(0, len(GOOD_IMAGES))),
    st.builds(lambda n, b: GOOD_IMAGES[:n] + b, st.integers(0, 16), st.binary(max_size=64)),
    st.builds(lambda n: GOOD_LABELS[:n], st.integers(0, len(GOOD_LABELS))),
), kind=st.sampled_from(["images", "labels"]), gz=st.booleans())
@pytest.mark.integration
def test_idx_parser_fuzz(tmp_path_factory: pytest.TempPathFactory, raw: bytes, kind: str, gz: bool) -> None:
    import gzip

    path = tmp_path_factory.mktemp("fuzz") / "file"
    path.write_bytes(gzip.compress(raw)[: max(1, len(raw))] if gz else raw)
    try:
        array = read_idx(path, kind)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert array.dtype.name == "uint8"
    if kind == "images":
        assert array.shape[1:] == (28, 28)
    else:
        assert array.ndim == 1 and (array.size == 0 or array.max() <= 9)


@pytest.mark.integration
def test_ctrl_c_stops_parallel_seeds_and_the_same_command_resumes_them(full_synthetic_dir: Path,
                                                                       tmp_path: Path) -> None:
    args = ["consistency", "original_step3", "--seed-list", "1,2", "--jobs", "2", "--subset", "2000", "--epochs", "8",
            "--last-k", "2", "--device", "cpu", "--out", str(tmp_path)]
    proc = cli(*args, data=full_synthetic_dir)
    wait_for_rows(proc, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
    assert "run the same command again" in out
    for s in (1, 2):  # a worker training on would hold its run's lock: the workers stopped with the parent
        run = RunRecord(tmp_path / "original_step3" / f"seed-{s}")
        with run.lock():
            assert len(run.metrics()) < 8 and not run.finished()
    again = cli(*args, data=full_synthetic_dir)
    assert again.wait(300) == 0, again.communicate()
    for s in (1, 2):
        assert [m["epoch"] for m in RunRecord(tmp_path / "original_step3" / f"seed-{s}").metrics()] == list(range(1, 9))


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "state.json"])
def test_a_record_file_planted_as_a_symlink_is_refused_and_its_target_untouched(
        name: str, finished_run: Path, full_synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (finished_run / "summary.json").unlink()  # stopped at its last checkpoint: resume writes every record file
    target = finished_run / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim)
    assert main(["train", "--resume", str(finished_run), "--data-dir", str(full_synthetic_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "symbolic link" in err and len(err.splitlines()) == 1, err
    assert victim.read_text() == "precious\n"
