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


# --- a run's identity ---------------------------------------------------------------------------------------

def test_identity_names_each_part_that_differs(small_mnist, tmp_path: Path) -> None:
    """The model file's content, the recipe, the data and the options each make another run; the model file's
    path does not."""
    import dataclasses

    from conftest import CPU
    from tinymnist.runs.runner import identity
    from tinymnist.training.recipes import RunSpec

    models = tmp_path / "models.py"
    models.write_text("from torch import nn\n\ndef Net():\n    return nn.Sequential(nn.Conv2d(1, 10, 28), "
                      "nn.Flatten())\n")
    spec = RunSpec(recipe=Recipe(model=f"{models}:Net", epochs=1, seed=3), options=CPU, step="mine")
    run = start_run(tmp_path / "runs", "mine", spec.recipe, small_mnist)
    assert run.differs_from(identity(spec, small_mnist)) == []
    full_train, _ = small_mnist.full_sizes
    assert run.data_line() == f"{len(small_mnist.train_labels):,} of {full_train:,} training images"

    moved = tmp_path / "elsewhere" / "models.py"
    moved.parent.mkdir()
    shutil.copy(models, moved)
    assert run.differs_from(identity(dataclasses.replace(
        spec, recipe=dataclasses.replace(spec.recipe, model=f"{moved}:Net")), small_mnist)) == []

    def differs(**change: object) -> list[str]:
        return run.differs_from(identity(dataclasses.replace(spec, **change), small_mnist))

    assert differs(recipe=dataclasses.replace(spec.recipe, lr=0.05)) == ["recipe (lr 0.01 here, 0.05 asked)"]
    assert differs(train_images=1000) == [
        f"data ({len(small_mnist.train_labels):,} of {full_train:,} training images, scored on "
        f"{len(small_mnist.held_out_labels):,} of {small_mnist.full_sizes[1]:,} test images here, 1,000 of "
        f"{full_train:,} training images, scored on {len(small_mnist.held_out_labels):,} of "
        f"{small_mnist.full_sizes[1]:,} test images asked)"]
    assert differs(options=dataclasses.replace(CPU, threads=3)) == [f"options (threads {CPU.threads!r} here, 3 asked)"]
    models.write_text(models.read_text().replace("10, 28", "10, 28, bias=False"))
    assert differs() == ["model file's code (its SHA-256 differs)"]


@pytest.mark.parametrize("fixture", sorted(WRITTEN_BEFORE))
def test_a_record_of_an_earlier_version_has_an_identity_with_its_unknown_parts(fixture: str, full_synthetic_dir: Path,
                                                                               tmp_path: Path) -> None:
    """A registered model's identity is its name: an old run is the same run; an old record of a user's file holds
    no hash of it, so it is never taken for the file asked now."""
    import json

    from tinymnist.data import load_mnist
    from tinymnist.runs.runner import identity

    run = RunRecord(FIXTURES / fixture / "run")
    data = load_mnist(full_synthetic_dir, allow_download=False)
    assert run.data_line() == "1,000 training images"  # the record does not say of how many
    assert run.differs_from(identity(run.spec(), data)) == []
    header = json.loads((FIXTURES / fixture / "run" / "recipe.json").read_text())
    header["recipe"]["model"] = "models.py:Net"
    copy = tmp_path / "user"
    copy.mkdir()
    (copy / "recipe.json").write_text(json.dumps(header))
    user = RunRecord(copy)
    asked = {**identity(run.spec(), data), "model": "Net", "model_sha256": "0" * 64}
    assert user.differs_from(asked) == ["model file (this record, from an earlier version, holds no hash of it)"]


def test_train_into_a_run_of_another_identity_says_what_differs(mnist_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "original_step3", "--epochs", "1", "--subset", "1000", "--device", "cpu", "--threads", "1",
            "--runs", str(tmp_path), "--data-dir", str(mnist_dir)]
    assert main(argv) == 0
    capsys.readouterr()
    for change, said in ((["--subset", "500"], "differs in its data (1,000 of"), (["--lr", "0.05"], "its recipe (lr"),
                         (["--no-channels-last"], "its options (channels_last")):
        assert main([*argv, *change]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "new --runs folder" in err and len(err.splitlines()) == 1, err
    assert main(argv) == 2
    assert "already holds this same run, finished" in capsys.readouterr().err


# --- records that read themselves ---------------------------------------------------------------------------

def test_an_old_records_tuning_seeds_do_not_come_from_todays_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing a built-in step never changes what an old record means: the upgrade holds its own table."""
    from tinymnist.steps import builtin

    monkeypatch.setattr(builtin, "JOURNEYS", {})
    monkeypatch.setattr(builtin, "RECIPES", ())
    for fixture in WRITTEN_BEFORE:
        assert RunRecord(FIXTURES / fixture / "run").header()["tuned_seeds"] == [1, 2, 3, 4, 5]


def test_a_record_is_read_once(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymnist.runs import records

    reads: list[str] = []
    real = records.read_json
    monkeypatch.setattr(records, "read_json", lambda path: reads.append(path.name) or real(path))
    run = RunRecord(trained_run)
    for _ in range(3):
        run.recipe(), run.options(), run.spec(), run.step(), run.data_sizes(), run.normalization(), run.summary()
        run.identity(), run.data_line()
    assert sorted(reads) == ["recipe.json", "summary.json"]


@pytest.mark.parametrize(("name", "damage", "said"), [
    ("recipe.json", lambda h: [1, 2], "recipe.json holds a JSON list, not an object"),
    ("recipe.json", lambda h: {**h, "data": {"train_images": "x"}}, "recipe.json: the field 'data'"),
    ("recipe.json", lambda h: {**h, "normalization": {"mean": 0.1, "std": 0}},
     "recipe.json: the field 'normalization'"),
    ("recipe.json", lambda h: {**h, "recipe": "compact"}, "recipe.json: the field 'recipe'"),
    ("summary.json", lambda s: {}, "summary.json: the field 'params'"),
    ("summary.json", lambda s: {**s, "verdict": []}, "summary.json: the field 'verdict'"),
])
def test_a_damaged_record_is_one_sentence_naming_the_file_and_field(
        name: str, damage, said: str, trained_run: Path, mnist_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    import json

    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    (run / name).write_text(json.dumps(damage(json.loads((run / name).read_text()))))
    for argv in (["show", str(run)], ["eval", str(run), "--data-dir", str(mnist_dir)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, (argv, err)


def test_a_summarys_keys_do_not_depend_on_the_window_judged(small_mnist, tmp_path: Path) -> None:
    from tinymnist.runs.runner import train_run

    data = small_mnist.subset(300, 200)
    keys = []
    for last_k in (1, 2):
        run = start_run(tmp_path / str(last_k), "compact_step2", Recipe(model="compact_7k4", epochs=2, seed=0), data)
        summary = train_run(run, data, last_k=last_k)
        assert summary["last_k"] == last_k and summary["min_test_acc_last_k"] == min(run.test_accs()[-last_k:])
        keys.append(set(summary))
    assert keys[0] == keys[1]
