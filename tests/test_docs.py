"""The generated documents say exactly what their generators write from the committed records."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_performance_doc_is_rendered_from_the_benchmark_json(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # each benchmark renders its own section
    bench = importlib.import_module("performance_doc")
    results = [json.loads(p.read_text()) for p in sorted((ROOT / "bench" / "results").glob("*.json"))]
    assert results, "bench/results/ holds no benchmark JSON"
    expected = (ROOT / "docs" / "performance.md").read_text()
    assert bench.render(results) == expected, (
        "docs/performance.md differs from the benchmark JSON; regenerate it with "
        "`python bench/performance_doc.py docs/performance.md bench/results/*.json`")


def test_results_doc_is_rendered_from_the_committed_run_records() -> None:
    import warnings

    from tinymnist.reports.results_doc import results_markdown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on the old names some records carry
        text = results_markdown(ROOT / "evidence" / "runs",
                                "tinymnist results --runs evidence/runs --out docs/results.md")
    assert (ROOT / "docs" / "results.md").read_text() == text, (
        "docs/results.md differs from the run records in evidence/runs; regenerate it with `tinymnist results`")


def test_search_doc_is_rendered_from_the_committed_study_exports(tmp_path: Path, monkeypatch) -> None:
    import pytest

    pytest.importorskip("matplotlib")
    from tinymnist.reports.search_doc import search_markdown
    from tinymnist.search.analysis import read_exports

    monkeypatch.chdir(ROOT)  # the document names the exports and runs by their paths in the repository
    exports = [Path("evidence/studies") / p.name for p in sorted((ROOT / "evidence" / "studies").glob("*.json"))]
    assert exports, "evidence/studies/ holds no study export"
    command = (f"tinymnist search-doc {' '.join(map(str, exports))} --runs evidence/runs --out docs/search.md "
               f"--figure docs/images/search-frontier.png --bar baseline-compact-step4 "
               f"--folds evidence/studies/front-5k.jsonl --baseline band-4k-6k:10")
    text = search_markdown(read_exports(exports), Path("evidence/runs"), tmp_path / "docs" / "images" / "f.png",
                           tmp_path / "docs" / "search.md", command, "baseline-compact-step4",
                           Path("evidence/studies/front-5k.jsonl"), "band-4k-6k:10")
    text = text.replace("](images/f.png)", "](images/search-frontier.png)").replace(
        "](images/f-pass-rate.png)", "](images/search-frontier-pass-rate.png)")
    assert (ROOT / "docs" / "search.md").read_text() == text, (
        "docs/search.md differs from the study exports and confirmation runs; regenerate it with the command "
        "at its top")


def test_deploy_doc_is_rendered_from_the_deploy_json() -> None:
    spec = importlib.util.spec_from_file_location("bench_deploy", ROOT / "bench" / "bench_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    kinds = {json.loads(p.read_text())["kind"] for p in (ROOT / "bench" / "results" / "deploy").glob("*.json")}
    assert kinds == {"int8", "web"}, "bench/results/deploy/ needs an int8 and a web measurement"
    assert (ROOT / "docs" / "deploy.md").read_text() == bench.doc(), (
        "docs/deploy.md differs from bench/results/deploy/*.json; regenerate it with "
        "`python bench/bench_deploy.py --doc docs/deploy.md`")


def test_readme_is_a_front_door_whose_table_is_generated() -> None:
    import warnings

    from tinymnist.reports.results_doc import headline_readme

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "README.md is the front door: at most 200 lines; the rest goes to docs/"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert headline_readme(readme, ROOT / "evidence" / "runs") == readme, (
            "README.md's headline table differs from evidence/runs; regenerate it with "
            "`tinymnist results --readme README.md`")
    for link in ("docs/guide.md", "docs/findings.md", "docs/deploy.md", "CONTRIBUTING.md", "CHANGELOG.md"):
        assert (ROOT / link).is_file() and f"]({link}" in readme, link
