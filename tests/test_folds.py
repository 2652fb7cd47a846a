"""Cross-validated levels (reports/folds.py): fold 0 from the export's screen, the other folds from the fold study,
the offsets, their spread and the bar they give, and a candidate paired fold by fold with its baseline."""

from __future__ import annotations

import json

import pytest

from tinymnist.errors import UsageError
from tinymnist.reports.folds import band_lines, cross_validated, cv_bar, cv_calibration, folds_lines, read_folds

RECIPE = {"model": "tiny:w=8.16,pool=1", "epochs": 15, "batch_size": 64, "lr": 0.2, "schedule": "onecycle"}


def export(study: str, model: str, level: float) -> dict:
    accs = [99.0] * 10 + [level] * 5
    trial = {"number": 3, "state": "complete", "over_budget": False, "val_acc": accs, "seed": 1, "value": level,
             "model": model, "n_params": 100, "recipe": {**RECIPE, "model": model, "seed": 1}, "seconds": 10.0}
    return {"study": study, "config": {"seed": 1, "last_k": 5, "validation": 10_000}, "trials": [trial]}


def fold_row(name: str, model: str, fold: int, level: float) -> dict:
    return {"name": name, "fold": fold, "seed": 1, "model": model, "params": 100, "recipe": {**RECIPE, "model": model},
            "level": level, "seconds": 3600.0, "cpu": "cpu", "precision": "fp32"}


def calibrated_row(study: str, val_mean: float, test: float, passes: int) -> dict:
    return {"study": study, "val": {"trials": [3], "mean": val_mean, "levels": {1: val_mean}}, "test_mean": test,
            "passes": passes, "seeds": list(range(1001, 1011))}


def test_levels_offsets_and_bar():
    exports = [export("a", "tiny:w=8.16,pool=1", 99.40), export("b", "tiny:w=8.24,pool=1", 99.50)]
    folds = [fold_row("a", "tiny:w=8.16,pool=1", 1, 99.44), fold_row("a", "tiny:w=8.16,pool=1", 2, 99.42),
             fold_row("b", "tiny:w=8.24,pool=1", 1, 99.46), fold_row("b", "tiny:w=8.24,pool=1", 2, 99.48),
             fold_row("lever", "tiny:w=8.16,pool=1,pad=1", 0, 99.45),
             fold_row("lever", "tiny:w=8.16,pool=1,pad=1", 1, 99.40)]
    recipes = {r["name"]: r for r in cross_validated(folds, exports)}
    assert recipes["a"]["levels"] == {0: pytest.approx(99.40), 1: 99.44, 2: 99.42}  # fold 0: the export's screen
    assert recipes["a"]["mean"] == pytest.approx(99.42)
    assert recipes["lever"]["study"] is None and recipes["lever"]["levels"] == {0: 99.45, 1: 99.40}
    rows = [calibrated_row("a", 99.39, 99.48, 10), calibrated_row("b", 99.45, 99.44, 7)]
    calibrated = cv_calibration(list(recipes.values()), rows)
    assert [c["study"] for c in calibrated] == ["a", "b"]
    a, b = calibrated
    assert a["offset_cv"] == pytest.approx(0.06) and b["offset_cv"] == pytest.approx(99.44 - 99.48)
    bar = cv_bar(calibrated)
    assert bar["need"]["study"] == "a" and bar["bar"] == pytest.approx(99.48 + 0.04)
    assert bar["spread_cv"] == pytest.approx(0.10) and bar["spread_one"] == pytest.approx(0.10)
    text = "\n".join(folds_lines(folds, exports, rows, "f.jsonl", "a:3"))
    assert "| lever | `tiny:w=8.16,pool=1,pad=1` | 100 | 0: 99.45 1: 99.40 |" in text
    assert "+0.05 -0.04" in text  # fold by fold against a's folds 0 and 1
    assert "not within the 0.03 points" in text and "**99.520%**" in text


def test_the_best_level_per_band_counts_only_recipes_with_three_folds():
    def recipe(name: str, params: int, levels: dict) -> dict:
        return {"name": name, "model": f"m-{name}", "params": params, "levels": levels, "seconds": 1800.0,
                "study": None, "mean": sum(levels.values()) / len(levels), "sd": 0.0}

    recipes = [recipe("small", 4_500, {0: 99.30, 1: 99.32, 2: 99.34}),
               recipe("best-but-one-fold", 5_500, {0: 99.60}),  # one fold: not a cross-validated level
               recipe("mid", 5_400, {0: 99.40, 1: 99.36, 2: 99.38}),
               recipe("low", 5_900, {0: 99.20, 1: 99.22, 2: 99.24})]
    rows = [line for line in band_lines(recipes) if line.startswith("| 4,001") or line.startswith("| 5,001")]
    assert rows[0].startswith("| 4,001-5,000 | 99.320 ± 0.000 | small (`m-small`) | 4,500 | 1 | 0.50 |")
    assert rows[1].startswith("| 5,001-6,000 | 99.380 ± 0.000 | mid (`m-mid`) | 5,400 | 2 | 1.50 |")
    assert "| 4,001-5,000 | none measured | | | 0 | 0.00 |" in band_lines(recipes[1:2])


def test_unreadable_fold_file_is_one_sentence(tmp_path):
    bad = tmp_path / "f.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(UsageError, match="not a fold study"):
        read_folds(bad)
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps(fold_row("a", "m", 1, 99.0)) + "\n\n")
    assert len(read_folds(good)) == 1


def test_fold_k_holds_out_its_own_images_and_trains_on_the_rest(tmp_path):
    from conftest import write_mnist
    from tinymnist.data import load_validation_split

    where = write_mnist(tmp_path, 60, 10)
    zero, one = load_validation_split(where, validation=20), load_validation_split(where, validation=20, fold=1)
    assert len(zero.train_labels) == len(one.train_labels) == 40
    assert zero.held_out_images.equal(one.train_images[-20:])  # fold 0's held-out images train fold 1
    assert one.held_out_images.equal(zero.train_images[20:40])
    assert zero.train_images[:20].equal(one.train_images[:20])
    with pytest.raises(Exception, match="fold 3"):
        load_validation_split(where, validation=20, fold=3)


@pytest.mark.parametrize("name, params", [
    ("tiny:w=8.32.24.24.24,pool=2,sep=3,sq=0,pad=2", 5480),  # padding changes no weight
    ("tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3", 5528),  # the repeated block counts once
    ("tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3,repbn=1", 5656),  # and two more BatchNorms of 32 channels
    ("tiny:w=12.40.24.24.24,pool=2,sep=3,sq=0,fact=2", 5372),  # 3*12*12 + 3*12*40 + 80 for layer 2
])
def test_levers_keep_their_parameter_count(name, params):
    import torch

    from tinymnist.models import count_params, create_model

    model = create_model(name)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_lever_that_cannot_apply_is_one_sentence():
    from tinymnist.models import create_model

    with pytest.raises(UsageError, match="rep"):
        create_model("tiny:w=8.16.24,pool=2,rep=2")  # the last layer changes width: it cannot repeat
    with pytest.raises(UsageError, match="leave no image"):
        create_model("tiny:w=8.16.16.16.16,pool=2,rep=9")
