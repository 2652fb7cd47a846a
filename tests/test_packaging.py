"""What a pip user gets: the licence the package declares, an sdist without tests that could not run, and
`results` that says what it needs outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tinymnist.cli.main import main

ROOT = Path(__file__).parents[1]


def test_the_licence_is_a_file_and_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.integration
def test_the_sdist_ships_no_tests_that_cannot_run(tmp_path: Path) -> None:
    """Either no tests, or the tests with conftest.py and their fixtures (the sdist used to hold test files alone)."""
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    name = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    assert "LICENSE" in names and "src/tinymnist/use/serve.py" in names
    tests = [n for n in names if n.startswith("tests/")]
    assert not tests or {"tests/conftest.py", "tests/fixtures"} <= set(tests), tests


def test_results_outside_a_checkout_says_what_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # no docs/ folder here, as after `pip install tinymnist`
    assert main(["results", "--runs", str(ROOT / "evidence" / "runs")]) == 2
    err = capsys.readouterr().err
    assert "--out FILE" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_results_counts_rows_not_headers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.md"
    assert main(["results", "--runs", str(ROOT / "evidence" / "runs"), "--out", str(out)]) == 0
    rows = sum(line.startswith("| `") for line in out.read_text().splitlines())  # every row names its recipe
    assert f"wrote {out}: {rows} table rows" in capsys.readouterr().out
