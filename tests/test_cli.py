from __future__ import annotations

from pathlib import Path

import pytest

from tinymnist.cli.main import main
from tinymnist.runs.records import RunRecord


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_and_steps(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "original_step4" in out and "8,066" in out and "21,562" in out
    code, out, _ = run_cli(capsys, "steps")
    assert code == 0 and "journey original:" in out and "4. original_step4" in out
    assert "tuned on seed 121" in out and "tuned on seeds 1-5" in out
    assert "journey compact:" in out and "frontier_sep_3k8" in out


@pytest.mark.integration
def test_data_command(capsys: pytest.CaptureFixture, full_synthetic_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "grid.png"
    code, out, _ = run_cli(capsys, "data", "--data-dir", str(full_synthetic_dir), "--out", str(png))
    assert code == 0 and "train: 60,000 images" in out and "per class" in out and "normalized" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_train_short_run(capsys: pytest.CaptureFixture, full_synthetic_dir: Path, tmp_path: Path) -> None:
    args = ["train", "original_step4", "--data-dir", str(full_synthetic_dir), "--subset", "600", "--epochs", "2",
            "--out", str(tmp_path), "--device", "cpu"]
    code, out, _ = run_cli(capsys, *args)
    run = RunRecord(tmp_path / "original_step4" / "seed-121")
    assert code == 0 and run.finished() and "targets NOT met" in out  # a run near chance also says so after it
    rows = [line for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [float(row.split()[4].rstrip("%")) for row in rows] == [round(a, 2) for a in run.test_accs()]
    code, _, _ = run_cli(capsys, *args, "--require-targets", "--seed", "5")
    assert code == 1


def bad_inputs(data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    d = ["--data-dir", str(data), "--subset", "600", "--device", "cpu"]
    (tmp / "a-file").write_text("")
    return {
        "unknown command": (["frobnicate"], "invalid choice"),
        "unknown step": (["train", "original_stepp4", *d], "Did you mean 'original_step4'"),
        "zero epochs": (["train", "original_step4", "--epochs", "0", *d], "at least 1"),
        "negative epochs": (["train", "original_step4", "--epochs", "-3", *d], "at least 1"),
        "zero lr": (["train", "original_step4", "--lr", "0", *d], "greater than 0"),
        "negative lr": (["train", "original_step4", "--lr", "-0.1", *d], "greater than 0"),
        "lr not a number": (["train", "original_step4", "--lr", "fast", *d], "not a number"),
        "zero batch": (["train", "original_step4", "--batch-size", "0", *d], "at least 1"),
        "batch above training set": (["train", "original_step4", "--batch-size", "601", *d],
                                     "larger than the training"),
        "unknown device": (["train", "original_step4", "--device", "tpu9", "--data-dir", str(data)], "device"),
        "missing data": (["data", "--data-dir", str(tmp / "empty"), "--no-download"], "missing"),
        "out not writable": (["train", "original_step4", "--out", str(tmp / "a-file" / "x"), *d], "cannot write"),
        "resume nothing": (["train", "--resume", str(tmp / "nothing")], "not a run directory"),
        "no step": (["train"], "name a step"),
        "bad seed list": (["consistency", "original_step4", "--seed-list", "1,x", *d], "whole numbers"),
        "repeated seed": (["consistency", "original_step4", "--seed-list", "1,1", *d], "each once"),
        "K above epochs": (["consistency", "original_step4", "--epochs", "3", "--last-k", "5", *d], "more than the"),
        "unknown journey": (["report", "orignal"], "Did you mean 'original'"),
        "unknown model": (["layers", "compact_7k"], "Did you mean 'compact_7k4'"),
        "unknown precision": (["train", "original_step4", "--precision", "fp8", *d], "invalid choice"),
        "eval of no run": (["eval", str(tmp / "nothing")], "not a run directory"),
    }


@pytest.mark.integration
def test_every_bad_input_exits_2_with_one_sentence(capsys: pytest.CaptureFixture, full_synthetic_dir: Path,
                                                     tmp_path: Path) -> None:
    for case, (argv, expected) in bad_inputs(full_synthetic_dir, tmp_path).items():
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, f"{case}: exit {code}"
        assert "Traceback" not in err + out, case
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tinymnist: error:"), f"{case}: {err!r}"
        assert expected in lines[0], f"{case}: {lines[0]}"


@pytest.mark.integration
def test_out_dir_holding_a_different_run(capsys: pytest.CaptureFixture, full_synthetic_dir: Path,
                                         tmp_path: Path) -> None:
    base = ["train", "original_step4", "--data-dir", str(full_synthetic_dir), "--subset", "300", "--device", "cpu",
            "--out", str(tmp_path)]
    assert run_cli(capsys, *base, "--epochs", "1")[0] == 0
    code, _, err = run_cli(capsys, *base, "--epochs", "2")
    assert code == 2 and "holds a run that differs in its recipe (epochs 1 here, 2 asked" in err


@pytest.mark.integration
def test_consistency_over_seeds(capsys: pytest.CaptureFixture, full_synthetic_dir: Path, tmp_path: Path) -> None:
    args = ["consistency", "original_step4", "--seed-list", "3,4", "--subset", "400", "--epochs", "2", "--last-k",
            "2", "--device", "cpu", "--data-dir", str(full_synthetic_dir), "--runs", str(tmp_path)]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and out.count("epoch train loss") == 2
    assert "seeds passing (>= 99.40% in each of the last 2 epochs): " in out and "95% interval" in out
    assert all((tmp_path / "original_step4" / f"seed-{s}" / "summary.json").is_file() for s in (3, 4))
    table = out[out.index("test acc, last 2 epochs"):]
    # A second call reuses the finished runs instead of training again, and prints the same table.
    code, again, _ = run_cli(capsys, *args)
    assert code == 0 and "(finished: reused)" in again and again[again.index("test acc, last 2 epochs"):] == table
    code, _, err = run_cli(capsys, *args[:-2], "--runs", str(tmp_path), "--last-k", "5")
    assert code == 2 and "more than the recipe's 2 epochs" in err


@pytest.mark.integration
def test_consistency_defaults_to_fresh_seeds_and_marks_tuning_seeds(capsys: pytest.CaptureFixture,
                                                                  full_synthetic_dir: Path, tmp_path: Path) -> None:
    common = ["--subset", "300", "--epochs", "1", "--last-k", "1", "--device", "cpu", "--data-dir",
              str(full_synthetic_dir), "--runs", str(tmp_path)]
    code, out, _ = run_cli(capsys, "consistency", "compact_step2", "--seeds", "2", *common)
    assert code == 0 and sorted(p.name for p in (tmp_path / "compact_step2").iterdir()) == ["seed-1001", "seed-1002"]
    assert "tuning seed" not in out
    code, out, _ = run_cli(capsys, "consistency", "compact_step2", "--seed-list", "2,1003", *common)
    assert code == 0 and "(tuning seed)" in out and "seed 2 was used to tune this recipe" in out


def test_old_names_work_with_one_note(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "summary", "valid_7k4")
    assert code == 0 and "total: 7,432 params" in out
    assert err.splitlines() == ["tinymnist: note: command 'summary' is now called 'layers'; model 'valid_7k4' is "
                                "now called 'compact_7k4'; the old names still work."]


def test_layers_command(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "layers", "original_step4")
    assert code == 0 and "total: 8,066 params" in out and "final receptive field 28x28" in out
    assert run_cli(capsys, "layers", "nope")[0] == 2


@pytest.mark.integration
def test_parallel_seeds_match_sequential_runs(capsys: pytest.CaptureFixture, full_synthetic_dir: Path,
                                              tmp_path: Path) -> None:
    """--jobs 2 trains each seed in its own process with one thread: the same numbers as one at a time with
    --threads 1, a row per epoch tagged with its seed, and the threads recorded in each run."""
    import json

    common = ["compact_step2", "--seed-list", "5,6,7", "--subset", "300", "--epochs", "2", "--last-k", "2",
              "--device", "cpu", "--data-dir", str(full_synthetic_dir)]
    code, sequential, _ = run_cli(capsys, "consistency", *common, "--threads", "1", "--out", str(tmp_path / "one"))
    assert code == 0
    code, out, _ = run_cli(capsys, "consistency", *common, "--jobs", "2", "--out", str(tmp_path / "two"))
    assert code == 0 and "2 at a time" in out
    assert sorted(line.split()[0] for line in out.splitlines() if line.endswith(tuple("0123456789"))
                  and len(line.split()) == 8) == ["5", "5", "6", "6", "7", "7"]
    for seed in (5, 6, 7):
        one, two = (tmp_path / d / "compact_step2" / f"seed-{seed}" for d in ("one", "two"))
        strip = [{k: v for k, v in m.items() if "seconds" not in k} for m in
                 (json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines())]
        assert strip == [{k: v for k, v in m.items() if "seconds" not in k} for m in
                         (json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines())]
        assert json.loads((two / "recipe.json").read_text())["options"]["threads"] == 1
    assert sequential[sequential.index("test acc, last 2"):] == out[out.index("test acc, last 2"):]
    # docs/results.md-style table: the row names the arithmetic, and its command reproduces it.
    assert run_cli(capsys, "results", "--runs", str(tmp_path / "two"), "--out", str(tmp_path / "r.md"))[0] == 0
    rows = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| `compact_step2")]
    assert [row.split(" | ")[2:4] for row in rows] == [["test set", "5 (tuning)"], ["test set", "6-7 (fresh)"]]
    from tinymnist.machine import cpu_name

    assert f"1 thread, {cpu_name()} |" in rows[1] and "--seed-list 6,7 --epochs 2 --subset 300 --precision" in rows[1]
    assert rows[1].endswith("--threads 1` |")
    # An error in a worker process reaches the user as the same one-line error.
    code, _, err = run_cli(capsys, "consistency", *common, "--jobs", "2", "--lr", "1e12",
                           "--out", str(tmp_path / "nan"))
    assert code == 2 and "the loss became nan" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["models"], ["steps"], ["layers", "compact_7k4"]])
@pytest.mark.integration
def test_a_closed_output_pipe_ends_quietly(argv: list[str]) -> None:
    """`tinymnist models | head -2`: the reader goes away before the output ends. Here it goes away before the
    first line (the read end is closed at once, while the child still imports torch), so every run hits it."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""


# Commands that only read records, as a user types them: each must start and end without torch.
READING = {"version": ["--version"], "show": ["show", "tests/fixtures/run_0_2_0/run"],
           "check": ["check", "compact", "--runs", "evidence/runs"], "results": ["results", "--runs", "evidence/runs"]}


@pytest.mark.parametrize("name", list(READING))
def test_commands_that_read_records_load_no_torch(name: str, tmp_path: Path) -> None:
    """`tinymnist --version`, `show`, `check` and `results` in a fresh process: torch, numpy and the training
    loop are not in sys.modules when the command has run (tests/test_architecture.py checks the imports of
    every cli module; this checks what the commands do). `steps` and `models` count parameters by building
    each model, so they load torch."""
    import subprocess
    import sys

    argv = READING[name] + (["--out", str(tmp_path / "results.md")] if name == "results" else [])
    code = ("import sys\nfrom tinymnist.cli.main import main\ntry:\n    code = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    code = e.code\nloaded = {'torch', 'numpy', 'tinymnist.training.engine', "
            "'tinymnist.runs.runner'} & set(sys.modules)\nprint('LOADED', sorted(loaded), file=sys.stderr)\n"
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and done.stderr.splitlines()[-1] == "LOADED []", (done.stdout, done.stderr)


def test_the_cli_is_a_thin_shell() -> None:
    """The cli/ modules parse, call the library and print: none of them imports torch or the training machinery
    (module level or inside a function; what they load through the library is test_architecture's), and the
    accuracy target is written only where it is defined."""
    import ast
    import re

    src = Path(__file__).parents[1] / "src" / "tinymnist"
    for path in (src / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {name for name in imported if name.split(".")[0] == "torch"
                    or name in ("tinymnist.training.engine", "tinymnist.training.executor")}, path.name
    for path in src.rglob("*.py"):
        lines = [line for line in path.read_text().splitlines() if re.search(r"99\.40?\b", line)]
        if path.name == "targets.py":
            assert len([line for line in lines if "TARGET_ACC, LAST_K = " in line]) == 1
        else:
            assert not lines, (path.name, lines)


def test_one_list_of_recipe_overrides() -> None:
    """settings.OVERRIDES is the one list: every training command takes its flags, and a results row's flags
    (results_doc.OPTION_FLAGS), given back to the command line, are the overrides the run recorded."""
    from dataclasses import fields

    from tinymnist.cli.common import recipe_overrides
    from tinymnist.cli.main import build_parser
    from tinymnist.reports.results_doc import OPTION_FLAGS
    from tinymnist.settings import OVERRIDES
    from tinymnist.training.recipes import Recipe

    assert {o.field for o in OVERRIDES} <= {f.name for f in fields(Recipe)}
    given = {"count": ("3", 3), "positive": ("0.5", 0.5), "number": ("0.25", 0.25), "run": ("runs/a/seed-1",) * 2}
    flags = [text for o in OVERRIDES for text in (OPTION_FLAGS[o.field], given[o.takes][0])]
    recorded = {o.field: given[o.takes][1] for o in OVERRIDES}
    for command in (["train", "compact_step4"], ["consistency", "compact_step4"],
                    ["search-confirm", "study.json", "--trial", "1"]):
        assert recipe_overrides(build_parser().parse_args([*command, *flags])) == recorded, command
    assert recipe_overrides(build_parser().parse_args(["train", "compact_step4", "--seed", "7"])) == {"seed": 7}
