"""docs/search.md from study exports and confirmation runs: what it says, and results.md's rows for searched
trials."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import CPU
from tinymnist.data import MNIST
from tinymnist.reports.results_doc import results_markdown
from tinymnist.reports.search_doc import search_markdown
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.runs.runner import create_run, train_run
from tinymnist.search.analysis import pareto, read_exports
from tinymnist.training.recipes import Recipe, RunSpec

RECIPE = {**Recipe(model="tiny:w=4.8.8,pool=2", epochs=2, batch_size=64, seed=1).__dict__}


def trial(number: int, state: str, params: int, accs: list[float], **extra: object) -> dict:
    return {"number": number, "state": state, "value": min(accs[-2:]) if state == "complete" else None,
            "params": {"lr": 0.1}, "model": RECIPE["model"], "n_params": params, "recipe": RECIPE, "val_acc": accs,
            "seconds": 12.0, "over_budget": False, "retry_of": None, "worker": "h:1", "start": None, "end": None,
            **extra}


def export() -> dict:
    return {"study": "demo", "direction": "maximize", "optuna": "5.0.0",
            "config": {"max_params": 3000, "space": "builtin", "epochs": [2], "validation": 300, "train_size": 600,
                       "seed": 1, "last_k": 2, "precision": "fp32"},
            "trials": [trial(0, "complete", 1200, [97.0, 98.0]), trial(1, "complete", 900, [97.5, 98.5]),
                       trial(2, "complete", 2000, [98.0, 98.9]), trial(3, "pruned", 1500, [60.0]),
                       trial(4, "complete", 2500, [98.0, 98.7]),
                       {**trial(5, "pruned", 9000, []), "over_budget": True, "recipe": RECIPE},
                       trial(6, "fail", 1200, [90.0]), trial(7, "complete", 1200, [97.9, 98.1], retry_of=6)]}


def test_pareto_keeps_the_trials_no_smaller_one_beats() -> None:
    assert [t["number"] for t in pareto(export()["trials"])] == [1, 7, 2]


def confirm(root: Path, data: MNIST, seeds: list[int]) -> None:
    for seed in seeds:
        recipe = Recipe(**{**RECIPE, "seed": seed})
        run = RunRecord(run_dir(root, "search/demo/trial-2", seed))
        origin = {"study": "demo", "trial": 2, "export": "evidence/studies/demo.json"}
        create_run(run, RunSpec(recipe=recipe, options=CPU, step="search/demo/trial-2", tuned_seeds=(1,),
                                origin=origin), data)
        train_run(run, data, last_k=2)


def test_the_pass_rate_front_keeps_recipes_no_smaller_one_beats() -> None:
    from tinymnist.reports.calibration import rate_front

    rows = [{"label": label, "params": params, "passes": passes, "runs": runs} for label, params, passes, runs in (
        ("a", 2108, 0, 10), ("b", 3768, 5, 10), ("c", 6696, 1, 10), ("d", 7432, 20, 20), ("e", 7432, 9, 10),
        ("f", 8066, 0, 5))]
    assert [r["label"] for r in rate_front(rows)] == ["a", "b", "d"]
    taught = {"label": "b --teacher RUN", "params": 3768, "passes": 10, "runs": 10, "taught": True}
    assert [r["label"] for r in rate_front(sorted([*rows, taught], key=lambda r: (r["params"], -r["passes"])))] == \
        ["a", "b", "d"]  # a teacher is training the exercise does not count


@pytest.fixture(scope="module")
def confirmed(small_mnist: MNIST, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    confirm(root, small_mnist.subset(600, 300), [1001, 1002])
    return root


@pytest.mark.integration
def test_search_doc_has_the_method_the_studies_and_the_confirmations(confirmed: Path, tmp_path: Path) -> None:
    path = tmp_path / "studies" / "demo.json"
    path.parent.mkdir()
    data = export()  # and a re-scoring trial, luckier than any screen: it ranks nothing on its own
    data["trials"].append(trial(8, "complete", 2000, [99.8, 99.9], rescore_of=2, seed=2))
    path.write_text(json.dumps(data))
    out, figure = tmp_path / "docs" / "search.md", tmp_path / "docs" / "images" / "frontier.png"
    bar = {**export(), "study": "bar", "trials": [trial(0, "complete", 5000, [97.9, 98.9])]}
    (path.parent / "bar.json").write_text(json.dumps(bar))
    text = search_markdown(read_exports([path, path.parent / "bar.json"]), confirmed, figure, out,
                           "tinymnist search-doc ...", bar="bar")
    assert figure.stat().st_size > 10_000
    assert "](images/frontier.png)" in text
    assert "Trials never see the test set" in text and "same number of epochs" in text
    assert "6 trials trained: 5 complete, 1 pruned; 1 sampled models were over the budget" in text
    assert "1 failed (1 retries). Besides, 1 re-scoring trial trained chosen recipes again" in text
    assert "(at most 3,000 parameters, 6 trained trials and 1 re-scoring)" in text
    assert ("Compute: 0.02 worker-hours for 7 trained trials, 300.0 trials per worker-hour; 13 epochs trained, "
            "6 s per epoch") in text
    assert "900 params 97.50% (trial 1), 1,200 params 97.90% (trial 7), 2,000 params 98.00% (trial 2)" in text
    # a study made before 0.4.0: its space, score and design given
    assert ("--study demo --max-params 3000 --space builtin --epochs 2 --validation 300 --subset 600 "
            "--precision fp32 --score worst --design 0 --trials 6") in text
    row = next(line for line in text.splitlines() if line.startswith("| 2 | ") and "1001-1002" in line)
    assert "search-confirm" in row and "of 2" in row
    best = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "tiny:" in line]
    assert best[:3] == ["| 2", "| 4", "| 7"]
    listed = text.split("at least 97.90%, study `bar`'s")[1].split("Frontier")[0]
    assert [line.split(" | ")[0] for line in listed.splitlines() if "tiny:" in line] == ["| 2", "| 4", "| 7"]


@pytest.mark.integration
def test_calibration_sets_a_one_point_study_beside_the_same_recipe_on_fresh_test_seeds(confirmed: Path) -> None:
    from tinymnist.models import count_params, create_model
    from tinymnist.reports.calibration import calibration_rows
    from tinymnist.reports.results_doc import run_groups

    params = count_params(create_model(RECIPE["model"]))
    point = {**export(), "study": "point", "config": {**export()["config"], "last_k": 2}, "trials": [
        trial(0, "complete", params, [97.0, 98.0]),
        trial(1, "complete", params, [97.0, 98.4], seed=2, recipe={**RECIPE, "seed": 2}, rescore_of=0)]}
    other = {**point, "study": "other", "trials": [trial(0, "complete", params + 1, [97.0, 98.0])]}  # no such runs
    (row,) = calibration_rows([point, other, export()], run_groups(confirmed), subsets=True)  # the others: other params
    assert row["study"] == "point" and row["label"].startswith("search/demo/trial-") and row["seeds"] == [1001, 1002]
    assert row["val"]["levels"] == {1: 97.5, 2: 97.7} and row["val"]["mean"] == pytest.approx(97.6)


@pytest.mark.integration
def test_calibration_takes_a_re_scored_trial_of_a_study_of_many_recipes_through_its_runs(confirmed: Path) -> None:
    from tinymnist.reports.calibration import calibration_rows
    from tinymnist.reports.results_doc import run_groups

    many = {**export(), "config": {**export()["config"], "last_k": 2}, "trials": [
        trial(2, "complete", 2000, [98.0, 98.9]),
        *(trial(8 + i, "complete", 2000, [98.0, 98.5 + i / 10], seed=s, recipe={**RECIPE, "seed": s}, rescore_of=2)
          for i, s in enumerate((2, 3, 4))),
        trial(3, "complete", 1000, [97.0, 98.0], recipe={**RECIPE, "lr": 0.3})]}  # another recipe, one seed
    (row,) = calibration_rows([many], run_groups(confirmed), subsets=True)  # the fixture trains on a subset
    assert row["study"] == "demo" and row["seeds"] == [1001, 1002] and sorted(row["val"]["levels"]) == [1, 2, 3, 4]
    many["trials"] = many["trials"][:3] + many["trials"][4:]  # three seeds: not re-scored enough to calibrate
    assert calibration_rows([many], run_groups(confirmed), subsets=True) == []


@pytest.mark.integration
def test_results_rows_for_a_searched_trial_name_its_command_and_tuning_seed(confirmed: Path) -> None:
    text = results_markdown(confirmed, "tinymnist results")
    row = next(line for line in text.splitlines() if line.startswith("| `search/demo/trial-2"))
    assert "| validation split | 1001-1002 (fresh) |" in row  # chosen by the search, never on the test set
    assert "tinymnist search-confirm evidence/studies/demo.json --trial 2 --seed-list 1001,1002" in row
    assert "- `search/demo/trial-2`: 1" in text


def test_a_bad_export_is_one_sentence(tmp_path: Path) -> None:
    from tinymnist.errors import UsageError

    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UsageError, match="not a study export"):
        read_exports([tmp_path / "x.json"])


def calibrated(study: str, val: list[float], test_mean: float, passes: int, runs: int = 10) -> dict:
    levels = dict(enumerate(val, start=1))
    mean = sum(val) / len(val)
    return {"study": study, "val": {"levels": levels, "mean": mean}, "label": study, "how": "fp32",
            "seeds": list(range(1001, 1001 + runs)), "test_mean": test_mean, "passes": passes}


def test_the_confirmation_bar_is_the_lowest_holding_test_level_less_the_smallest_offset() -> None:
    from tinymnist.reports.calibration import confirm_rule, strictness_lines

    rows = [calibrated("holds", [99.38, 99.40, 99.42, 99.40], 99.48, 10),
            calibrated("holds-too", [99.43, 99.45, 99.47, 99.45], 99.52, 9),
            calibrated("half", [99.30, 99.32, 99.34, 99.32], 99.37, 5),
            calibrated("one-seed", [99.00], 99.40, 0)]  # too few validation seeds to count
    rule = confirm_rule(rows)
    assert rule["need"] == pytest.approx(99.48)  # the lower of the two that hold (9 of 10 counts)
    assert rule["offsets"].keys() == {"holds", "holds-too", "half"}
    assert rule["offset"] == pytest.approx(0.05)  # "half": 99.37 - 99.32, the smallest
    assert rule["bar"] == pytest.approx(99.43)
    assert confirm_rule([calibrated("half", [99.3] * 4, 99.37, 8)]) is None  # nothing holds: no rule yet
    (line, _) = strictness_lines(rule, rows)  # "holds" (99.40 on validation) sits below its own bar, 99.43
    assert "`holds` (99.400, -0.030)" in line and "holds-too" not in line
    assert "differ by 0.030 points" in line  # offsets +0.08, +0.07, +0.05
    alone = rows[:1]  # one calibrated recipe: its own validation level is the bar
    assert confirm_rule(alone)["bar"] == pytest.approx(99.40) and strictness_lines(confirm_rule(alone), alone) == []


def test_the_bands_rank_recipes_over_seeds_and_screens_apart() -> None:
    from tinymnist.reports.calibration import bands

    point = {**export(), "study": "point", "trials": [
        trial(0, "complete", 2500, [97.0, 98.0]),
        *(trial(i, "complete", 2500, [97.0, 98.0 + i / 10], seed=i + 1, recipe={**RECIPE, "seed": i + 1},
                rescore_of=0) for i in (1, 2, 3))]}
    small = {**export(), "config": {**export()["config"], "max_params": 1000}}
    rows = {(b["low"], b["high"]): b for b in bands([small, point])}
    assert rows.keys() == {(0, 1000), (1000, 3000)}
    assert rows[0, 1000]["rated"] is None and rows[0, 1000]["screen"][0]["number"] == 1  # 900 params, one seed
    g, e = rows[1000, 3000]["rated"]
    assert e["study"] == "point" and sorted(g["levels"]) == [1, 2, 3, 4]
    assert rows[1000, 3000]["screen"][0]["number"] == 2  # the best screen (seed 1) in the band, any study
    assert rows[0, 1000]["hours"] == pytest.approx(12 / 3600)  # trial 1's seconds: the band's only trained trial
    banded = {(b["low"], b["high"]) for b in bands([{**point, "config": {**point["config"], "max_params": 8000},
                                                      "trials": [{**t, "n_params": 4500} for t in point["trials"]]}])}
    assert banded == {(4000, 5000)}  # the search's bands are edges whatever the studies' budgets


def test_a_shorter_screen_is_judged_by_its_rank_correlation_with_the_score() -> None:
    from tinymnist.reports.search_doc import screen_lines
    from tinymnist.search.analysis import screen_ranking, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894, abs=1e-3)  # ties share their mean rank
    curves = [[90 + i, 95 + i, 98 + i / 10, 99 + i / 10] for i in range(6)]  # epoch 1 ranks as the score does
    data = {**export(), "config": {**export()["config"], "epochs": [4], "last_k": 2},
            "trials": [trial(i, "complete", 1000, c) for i, c in enumerate(curves)]}
    ranking = screen_ranking(data, (1, 2, 3))
    assert ranking["trials"] == 6 and set(ranking["rho"]) == {1, 2}  # epoch 3 is scored: no screen there
    assert ranking["rho"][1] == pytest.approx(1.0)
    assert "Adopted: a screen stopped after epoch" not in "\n".join(screen_lines([data]))  # epochs 3, 5, ... only
    data["trials"][0]["val_acc"] = [99.9, 99.9, 98.0, 98.0]  # the best early, the worst at the end
    assert screen_ranking(data, (1,))["rho"][1] < 0.9
    assert screen_ranking({**data, "trials": data["trials"][:5]}, (1,)) is None  # too few trials to say


@pytest.mark.integration
def test_a_lever_run_of_a_trial_is_not_one_of_its_confirmations(confirmed: Path, small_mnist: MNIST,
                                                                 tmp_path: Path) -> None:
    from tinymnist.search.analysis import confirmations

    run = RunRecord(run_dir(tmp_path, "search/demo/trial-2", 1001))
    recipe = Recipe(**{**RECIPE, "seed": 1001, "elastic": 8.0})
    origin = {"study": "demo", "trial": 2, "export": "evidence/studies/demo.json"}
    create_run(run, RunSpec(recipe=recipe, options=CPU, step="search/demo/trial-2", tuned_seeds=(1,),
                            overrides={"elastic": 8.0, "seed": 1001}, origin=origin), small_mnist.subset(600, 300))
    train_run(run, small_mnist.subset(600, 300), last_k=2)
    assert confirmations(export(), tmp_path) == {}
    assert confirmations(export(), confirmed)[2]["seeds_run"] == 2


def test_a_setting_added_since_a_screen_was_exported_does_not_split_its_recipe() -> None:
    from tinymnist.search.analysis import by_recipe

    old = {k: v for k, v in RECIPE.items() if k not in ("elastic", "teacher", "distill")}  # an older export
    data = {**export(), "trials": [trial(0, "complete", 1000, [97.0, 98.0], recipe={**old, "seed": 1}),
                                   trial(1, "complete", 1000, [97.0, 98.4], recipe={**RECIPE, "seed": 2}, seed=2,
                                         rescore_of=0)]}
    (group,) = by_recipe(data)
    assert sorted(group["levels"]) == [1, 2] and group["screen"] == 0


@pytest.mark.integration
def test_a_trial_trained_again_on_another_machine_is_not_more_seeds(confirmed: Path, tmp_path: Path) -> None:
    import shutil

    from tinymnist.search.analysis import confirmations

    shutil.copytree(confirmed, tmp_path / "here")
    shutil.copytree(confirmed / "search" / "demo" / "trial-2" / "seed-1001",
                    tmp_path / "elsewhere" / "search" / "demo" / "trial-2" / "seed-1001")
    summary = tmp_path / "elsewhere" / "search" / "demo" / "trial-2" / "seed-1001" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "cpu": "another CPU"}))
    figures = confirmations(export(), tmp_path)[2]
    assert figures["seeds_run"] == 2 and [s["seed"] for s in figures["seeds"]] == [1001, 1002]


COMMITTED = [p for p in sorted((Path(__file__).resolve().parent.parent / "evidence" / "studies").glob("*.json"))
             if "trials" in json.loads(p.read_text())]  # study exports (a fold study's plan is not one)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_committed_export_upgrades_to_the_current_format(path: Path) -> None:
    """The one upgrade of the study-export format, on every committed export: what a setting the export lacks
    meant is given (the score and design of studies made before them, each trial's seed and fold), the upgrade
    leaves its input alone and is idempotent, and readers see the same recipes through it."""
    import copy

    from tinymnist.search.analysis import FORMAT, by_recipe, rescore_plan, upgrade_export
    from tinymnist.search.space import SearchConfig

    raw = json.loads(path.read_text())
    kept = copy.deepcopy(raw)
    new = upgrade_export(raw)
    assert raw == kept and new["format"] == FORMAT and upgrade_export(new) is new
    assert new["config"]["score"] in ("level", "worst") and isinstance(new["config"]["design"], int)
    if "score" not in raw["config"]:  # made before the level was the score, and before the initial design
        assert (new["config"]["score"], new["config"]["design"]) == ("worst", 0)
    assert SearchConfig.from_attrs(raw["config"]) == SearchConfig.from_attrs(new["config"])
    for before, after in zip(raw["trials"], new["trials"], strict=True):
        assert {k: v for k, v in after.items() if k not in ("seed", "fold")} == \
            {k: v for k, v in before.items() if k not in ("seed", "fold")}
        assert after["seed"] == (before.get("seed") or (before.get("recipe") or {}).get("seed")
                                 or raw["config"]["seed"])
        assert after["fold"] is None
    assert by_recipe(raw) == by_recipe(new)
    assert rescore_plan(raw, 3, [2, 3]) == rescore_plan(new, 3, [2, 3])
    assert read_exports([path])[0] == {**new, "path": str(path)}


def test_a_lever_is_paired_seed_by_seed_with_its_baseline_step_on_the_same_arithmetic(small_mnist: MNIST,
                                                                                       tmp_path: Path) -> None:
    """Step.baseline pairs a lever's runs with its baseline's on their common seeds, only between rows of the same
    flags, precision and CPU; a step without that baseline is never paired with it."""
    from test_check import fake_finished
    from tinymnist.steps.builtin import get_step

    lows = {"front_5k5": [99.40, 99.50, 99.30], "front_pad_5k5": [99.45, 99.40, 99.50],
            "frontier_sep_3k8": [99.0, 99.1, 99.2]}
    for name, worst in lows.items():
        step = get_step(name)
        for seed, low in zip((1, 2, 3), worst, strict=True):
            run = RunRecord(run_dir(tmp_path, name, seed))
            recipe = dataclasses.replace(step.recipe, seed=seed)
            create_run(run, RunSpec(recipe=recipe, step=name, tuned_seeds=step.tuned_seeds), small_mnist)
            fake_finished(run, [99.6] * (recipe.epochs - 5) + [low] + [99.6] * 4)
    text = results_markdown(tmp_path, "tinymnist results")
    pairs = [line for line in text.splitlines() if " against " in line]
    assert len(pairs) == 1 and pairs[0].startswith("| `front_pad_5k5` against `front_5k5` |")
    assert "| 1-3 | 2 / 3 | +0.050 |" in pairs[0]  # (+0.05 - 0.10 + 0.20) / 3, second minus first
