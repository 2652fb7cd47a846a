from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import start_run
from tinymnist.models import count_params, create_model, list_models
from tinymnist.models.layers import flops_per_image, layer_table
from tinymnist.reports.render import analyse, did_not_learn
from tinymnist.reports.report import write_report
from tinymnist.runs.records import RunRecord
from tinymnist.targets import judge
from tinymnist.training.recipes import Recipe, Step


def test_original_step4_receptive_fields_by_hand() -> None:
    # RF_out = RF_in + (k - 1) * jump_in; jump_out = jump_in * stride. Input: RF 1, jump 1.
    # conv3: 1 + 2*1 = 3 | conv3: 3 + 2*1 = 5 | maxpool2: 5 + 1*1 = 6, jump 2 | conv1x1: 6
    # conv3: 6 + 2*2 = 10 | conv3: 10 + 2*2 = 14 | conv3: 14 + 2*2 = 18 | avgpool6: 18 + 5*2 = 28, jump 12
    # conv1x1 head: 28. (BatchNorm and ReLU change nothing.)
    rows = [r for r in layer_table(create_model("original_step4"))
            if r.name.split()[0] in ("conv", "maxpool", "avgpool")]
    assert [r.rf for r in rows] == [3, 5, 6, 6, 10, 14, 18, 28, 28]
    assert [r.jump for r in rows] == [1, 1, 2, 2, 2, 2, 2, 12, 12]
    assert [r.shape for r in rows][:3] == [(10, 26, 26), (16, 24, 24), (16, 12, 12)]
    assert rows[-1].shape == (10, 1, 1)


@pytest.mark.parametrize("name", list_models())
def test_layer_table_works_for_every_model(name: str) -> None:
    model = create_model(name)
    rows = layer_table(model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    assert rows[-1].shape == (10, 1, 1) and rows[-1].rf >= 28
    assert flops_per_image(model) > 0


def test_layer_table_names_depthwise_convolutions() -> None:
    rows = [r for r in layer_table(create_model("sep_3k8")) if r.name.split()[0] in ("conv", "depthwise")]
    assert [r.name for r in rows[2:4]] == ["depthwise 3x3 16->16", "conv 1x1 16->24"]
    assert [r.params for r in rows[2:4]] == [144, 384] and [r.rf for r in rows[2:4]] == [10, 10]


def history(test: list[float], train: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 0.1, "test_loss": 0.1, "train_acc": a, "test_acc": b, "lr": 0.01,
             "train_seconds": 1.0, "seconds": 1.0} for i, (a, b) in enumerate(zip(train, test, strict=True))]


def test_analysis_names_over_and_underfitting_and_consistency() -> None:
    steady = [98.0] * 10 + [99.45, 99.41, 99.50, 99.47, 99.44]
    over = analyse([history(steady, [100.0] * 15)], 7_000)
    assert over[0].startswith("Overfits") and over[1].startswith("Consistent") and "bonus" in over[2]
    under = analyse([history(steady, [98.9] * 15)], 9_000)
    assert under[0].startswith("Underfits") and "66" not in under[2] and "1,001 too many" in under[2]
    swinging = [98.0] * 10 + [99.45, 99.10, 99.50, 99.20, 99.44]
    fine = analyse([history(swinging, [99.5] * 15)], 12_000)
    assert fine[0].startswith("Fits") and fine[1].startswith("Not consistent")
    assert "swing 0.40" in fine[1] and "2,001 over" in fine[2]


@pytest.mark.parametrize(("train", "test", "word"), [(64.0, 63.5, "Underfits"), (53.0, 60.0, "Underfits"),
                                                     (99.9, 98.0, "Overfits"), (99.6, 99.5, "Fits")])
def test_the_word_follows_the_numbers(train: float, test: float, word: str) -> None:
    """A model at 64% train accuracy was 'neither over- nor underfitting', one at 53% 'overfitting'."""
    fit = analyse([history([test] * 6, [train] * 6)], 7_000)[0]
    assert fit.split(":")[0] == word and f"{train:.2f}%" in fit and f"{test:.2f}%" in fit


def test_a_run_near_chance_says_it_did_not_learn() -> None:
    assert did_not_learn(history([9.58] * 2, [10.1] * 2)).startswith("Did not learn: final test accuracy 9.58%")
    assert did_not_learn(history([97.0] * 2, [97.0] * 2)) is None


def test_a_run_still_rising_is_settling() -> None:
    rising = analyse([history([98.0, 98.5, 98.9, 99.1, 99.3, 99.45], [99.6] * 6)], 7_000)
    assert rising[1].startswith("Settling: test accuracy still rose over the last 5 epochs (98.50% -> 99.45%)")
    flat = analyse([history([98.0, 99.5, 99.45, 99.5, 99.46, 99.47], [99.6] * 6)], 7_000)
    assert not any(s.startswith("Settling") for s in flat)


def test_a_gap_shown_the_same_is_judged_the_same() -> None:
    """Two steps whose train-test gap shows as 0.30 points got opposite words; now the shown (rounded) gap is
    judged, against a margin of 0.50 points."""
    test = [99.5] * 15
    words = {analyse([history(test, [99.5 + gap] * 15)], 7_000)[0].split(":")[0]
             for gap in (0.2996, 0.30, 0.3004)}
    assert words == {"Fits"}
    assert "gap +0.30 points" in analyse([history(test, [99.8004] * 15)], 7_000)[0]
    assert analyse([history(test, [99.9996] * 15)], 7_000)[0].startswith("Overfits")  # shown as 0.50
    assert analyse([history(test, [99.9949] * 15)], 7_000)[0].startswith("Fits")  # shown as 0.49


def fake_run(root: Path, step: str, model: str, seed: int, test: list[float], data) -> RunRecord:
    """A finished run record with untrained weights and a made-up history."""
    run = start_run(root, step, Recipe(model=model, epochs=len(test), seed=seed), data)
    torch.manual_seed(seed)
    module = create_model(model)
    hist = history(test, [t + 0.1 for t in test])
    run.save_checkpoint(model, {f"model.{k}": v for k, v in module.state_dict().items()}, hist)
    run.finish(params=count_params(module), history=hist, verdict=judge(count_params(module), test).to_dict(),
               first_epoch_holding=None, last_k=5, device="cpu", precision="fp32", compiled=False, wall_seconds=1.0)
    return run


@pytest.mark.integration
def test_report_on_fake_runs_has_every_section_and_figure(small_mnist, tmp_path: Path) -> None:
    """Steps 3 and 4 both have fresh-seed runs: the report once crashed (TypeError) on the step after the first
    one confirmed."""
    steps = tuple(Step(f"s{i}", f"target {i}", Recipe(model=m, epochs=6), (f"note {i}",))
                  for i, m in enumerate(["original_step1", "original_step2", "original_step3", "original_step4"], 1))
    accs = {1: [97.1 + e * 0.3 for e in range(6)], 2: [97.2 + e * 0.3 for e in range(6)], 1001: [99.5] * 6}
    runs = {s.name: [fake_run(tmp_path / "runs", s.name, s.recipe.model, seed, accs[seed], small_mnist)
                     for seed in (1, 2)] for s in steps}
    fresh = {s.name: [fake_run(tmp_path / "runs", s.name, s.recipe.model, 1001, accs[1001], small_mnist)]
             for s in steps[2:]}
    from tinymnist.use.inference import confident_predictions

    predictions = {s.name: confident_predictions(runs[s.name][0], small_mnist) for s in steps}
    path = write_report("fake", steps, runs, small_mnist, tmp_path / "out", "tinymnist report fake", fresh=fresh,
                        predictions=predictions)
    text = path.read_text()
    for i, s in enumerate(steps, 1):
        assert f"## Step {i}: `{s.name}`" in text and f"target {i}" in text and f"note {i}" in text
        for fig in ("curves", "misclassified", "confusion"):
            assert (tmp_path / "out" / "figures" / f"{s.name}-{fig}.png").stat().st_size > 5000
            assert f"figures/{s.name}-{fig}.png" in text
    assert "**Target.**" in text and "**Results.**" in text and "**Analysis**" in text
    assert "± " in text and "0 of 2 seeds" in text  # two seeds: mean ± std, and seeds meeting the targets
    assert (tmp_path / "out" / "figures" / "test-accuracy.png").is_file()
    assert text.count("**Confirmation on fresh seeds** (seeds 1001") == 2 and "1 of 1 (95% interval 2-100%)" in text


TINY = '''from torch import nn


class A(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 10, 3, stride=2))

    def forward(self, x):
        return self.body(x).mean((2, 3))


class B(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 12, 3, stride=2), nn.ReLU(), nn.Conv2d(12, 10, 3, stride=2))

    def forward(self, x):
        return self.body(x).mean((2, 3))
'''

TINY_JOURNEY = '''[recipe]
epochs = 1
lr = 0.05
seed = 1

[[step]]
name = "a"
model = "tiny.py:A"
target = "A."

[[step]]
name = "a-fast"
model = "tiny.py:A"
target = "A, faster."
lr = 0.1

[[step]]
name = "b"
model = "tiny.py:B"
target = "B."

[[step]]
name = "b-fast"
model = "tiny.py:B"
target = "B, faster."
lr = 0.1
'''


def step_sections(report: Path) -> dict[str, str]:
    sections = report.read_text().split("\n## Step ")[1:]
    return {s.split("`")[1]: s for s in sections}


@pytest.mark.integration
def test_report_reuses_only_the_same_run_like_make(mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`report --subset 3000` then `report` reused the subset runs under a command line without --subset;
    after an edit of models.py every step said "(finished: reused)"."""
    from tinymnist.cli.main import main

    data = mnist_dir
    monkeypatch.chdir(tmp_path)
    Path("tiny.py").write_text(TINY)
    Path("journey.toml").write_text(TINY_JOURNEY)
    args = ["report", "journey.toml", "--data-dir", str(data), "--no-download", "--threads", "1"]
    assert main([*args, "--subset", "2000"]) == 0
    assert capsys.readouterr().out.count("seed 1 trained") == 4
    assert "- Data: 2,000 of 60,000 training images" in step_sections(Path("report/report.md"))["a"]

    Path("tiny.py").write_text(TINY.replace("nn.Conv2d(1, 12, 3, stride=2), nn.ReLU(), nn.Conv2d(12, 10",
                                            "nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 10"))
    assert main([*args, "--subset", "2000"]) == 0
    out = capsys.readouterr().out
    assert "user/journey/a: seed 1 reused" in out and "user/journey/a-fast: seed 1 reused" in out
    assert "user/journey/b: seed 1 retrained: model code changed (B in tiny.py)" in out
    sections = step_sections(Path("report/report.md"))
    new_params = 16 * 9 + 16 + 16 * 10 * 9 + 10  # the edited B: 1,610 parameters (1,210 before)
    assert f"- Params: {new_params:,}; model `tiny.py:B`" in sections["b"] and "1,210" not in sections["b"]
    assert "- Run: retrained: model code changed (B in tiny.py)" in sections["b-fast"]
    assert "- Run: reused" in sections["a"]

    assert main(args) == 0  # all the images: every step anew
    out = capsys.readouterr().out
    assert out.count("seed 1 retrained: trained on 2,000 images, this report uses 60,000") == 4
    sections = step_sections(Path("report/report.md"))
    assert all("- Data: all 60,000 training images" in s for s in sections.values())

    assert main(args) == 0
    assert capsys.readouterr().out.count("seed 1 reused") == 4
    assert all("- Run: reused" in s for s in step_sections(Path("report/report.md")).values())


@pytest.mark.integration
def test_consistency_reuses_only_the_same_run(full_synthetic_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from tinymnist.cli.main import main

    args = ["consistency", "original_step4", "--seed-list", "3", "--epochs", "1", "--last-k", "1", "--device", "cpu",
            "--data-dir", str(full_synthetic_dir), "--runs", str(tmp_path)]
    assert main([*args, "--subset", "300"]) == 0
    assert "original_step4: seed 3 trained" in capsys.readouterr().out
    assert main([*args, "--subset", "300"]) == 0
    assert "original_step4: seed 3 reused" in capsys.readouterr().out
    assert main([*args, "--subset", "400"]) == 0
    assert "seed 3 retrained: trained on 300 images, this consistency uses 400" in capsys.readouterr().out
    assert main([*args, "--subset", "400", "--lr", "0.05"]) == 0
    assert "seed 3 retrained: recipe changed: lr" in capsys.readouterr().out


def test_a_run_of_other_options_is_not_the_same_run(tmp_path: Path, small_mnist) -> None:
    """Precision, threads and the like change the numbers: a report asking for others retrains; one leaving them
    at auto takes what the run resolved."""
    from dataclasses import replace

    from conftest import CPU
    from tinymnist.reports.report import same_run
    from tinymnist.training.recipes import RunSpec

    recipe = Recipe(model="compact_7k4", epochs=1, seed=2)
    run = start_run(tmp_path, "s", recipe, small_mnist, replace(CPU, threads=1, precision="fp32"))
    asked = RunSpec(recipe=recipe, options=replace(CPU, threads=1, precision="fp32"), step="s")
    assert same_run(run, asked, small_mnist) == []
    assert same_run(run, replace(asked, options=replace(CPU, threads=2, precision="fp32")), small_mnist) == [
        "options changed: threads"]
    assert same_run(run, replace(asked, options=CPU), small_mnist) == []  # auto: what the run resolved
