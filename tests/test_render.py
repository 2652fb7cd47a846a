"""Tables and sentences for people."""

from __future__ import annotations

from tinymnist.render import epoch_table, over_seeds_lines, pass_count, seed_list, verdict_lines
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
