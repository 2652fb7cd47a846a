"""Tables and sentences for people."""

from __future__ import annotations

from tinymnist.reports.render import epoch_table, over_seeds_lines, pass_count, seed_list, verdict_lines
from tinymnist.targets import judge, over_seeds


def test_seed_list_joins_runs() -> None:
    assert seed_list([5, 1, 2, 3, 1001, 1003, 1002]) == "1-3, 5, 1001-1003" and seed_list([]) == ""


def test_pass_count_widens_never_narrows() -> None:
    assert pass_count({"seeds_passing": 10, "seeds_run": 10, "pass_interval": [0.69150, 1.0]}) == \
        "10 of 10 (95% interval 69-100%)"
    assert pass_count({"seeds_passing": 0, "seeds_run": 1, "pass_interval": [0.0, 0.975]}) == \
        "0 of 1 (95% interval 0-98%)"


def rows(accs: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 0.1, "train_acc": 99.0, "test_loss": 0.02, "test_acc": a, "lr": 0.01,
             "seconds": 1.0} for i, a in enumerate(accs)]


def test_over_seeds_lines_mark_tuning_seeds() -> None:
    figures = over_seeds([1, 1001], [rows([99.5] * 5), rows([99.5, 99.3, 99.5, 99.5, 99.5])], 3_000)
    lines = over_seeds_lines(figures, tuned=(1, 2))
    assert lines[1].endswith("yes  (tuning seed)") and lines[2].endswith("NO")
    assert "1 of 2 (95% interval 1-99%)" in lines[3] and "Clopper-Pearson" in lines[3]
    assert lines[-1].startswith("seed 1 was used to tune this recipe")


def test_epoch_table_markdown_and_verdict() -> None:
    table = epoch_table(rows([99.1, 99.45]), published=(99.0, 99.4), markdown=True)
    assert table[0].endswith("| original test acc |") and table[-1].endswith("| 99.45 | 1.00e-02 | 1.0 | 99.40 |")
    summary = {"verdict": judge(7_000, [99.5] * 5).to_dict(), "first_epoch_holding": 1}
    assert verdict_lines(summary)[-2:] == ["first epoch from which every later epoch holds 99.40%: 1",
                                           "all targets met"]


def test_paired_rows_compare_two_rows_of_a_step_on_their_common_seeds() -> None:
    from tinymnist.reports.results_doc import paired_rows

    class Run:  # what paired_rows reads of a run record
        def __init__(self, accs: list[float]) -> None:
            self.accs = accs

        def test_accs(self) -> list[float]:
            return self.accs

    plain = {1: Run([99.0, 99.45, 99.38, 99.5, 99.42, 99.41]), 2: Run([99.5] * 5), 3: Run([99.35] * 5)}
    averaged = {1: Run([99.48] * 5), 2: Run([99.6] * 5), 4: Run([99.0] * 5)}
    groups = {("s", "", "fp32", None): plain, ("s", "--ema 0.999", "fp32", None): averaged,
              ("other", "", "fp32", None): plain}
    [row] = paired_rows(groups)
    # seeds 1 and 2 ran both: worst of last 5 99.38 -> 99.48 and 99.50 -> 99.60, mean +0.100, no spread
    assert row.startswith("| `s` | as defined, fp32 | --ema 0.999, fp32 | 1-2 | 1 / 2 | +0.100 | +0.100 to +0.100 |")


def test_changes_list_only_settings_that_act_in_the_journey_files_terms() -> None:
    from tinymnist.reports.handin import changes
    from tinymnist.training.recipes import Recipe

    plain = Recipe(model="compact_7k4")
    assert changes(plain, Recipe(model="compact_7k4", step_size=5), None) == []  # constant schedule: no effect
    assert changes(plain, Recipe(model="compact_7k4", schedule="step", step_size=5), None) == [
        'schedule: "constant" -> "step"', "step_size: 10 -> 5"]
    assert changes(plain, Recipe(model="compact_7k4", nesterov=True), None) == ["nesterov: false -> true"]
    no_momentum = Recipe(model="compact_7k4", momentum=0.0)
    assert changes(no_momentum, Recipe(model="compact_7k4", momentum=0.0, nesterov=True), None) == []
    adam = Recipe(model="compact_7k4", optimizer="adam", lr=0.001)
    assert changes(adam, Recipe(model="compact_7k4", optimizer="adam", lr=0.001, momentum=0.8), None) == [
        "momentum (Adam's beta1): 0.9 -> 0.8"]


def test_recipe_line_names_adams_beta1_and_no_idle_nesterov() -> None:
    from tinymnist.reports.render import recipe_line
    from tinymnist.training.recipes import Recipe

    adam = recipe_line(Recipe(model="compact_7k4", optimizer="adam", lr=0.001))
    assert "ADAM lr 0.001, beta1 0.9," in adam and "momentum" not in adam
    assert "Nesterov" not in recipe_line(Recipe(model="compact_7k4", momentum=0.0, nesterov=True))
    assert "momentum 0.9 (Nesterov)" in recipe_line(Recipe(model="compact_7k4", nesterov=True))


def test_a_table_cell_escapes_its_bars() -> None:
    from tinymnist.reports.render import md

    assert md("fewer params | more epochs\nand more") == "fewer params \\| more epochs and more"
