from __future__ import annotations

import pytest

from tinymnist.targets import (
    FIRST_FRESH_SEED,
    first_epoch_holding,
    fresh_seeds,
    holds,
    holds_last_k,
    judge,
    over_seeds,
    pass_interval,
)


def consistent(verdict) -> bool:
    return next(t for t in verdict.checks if "last" in t.name).met


def test_exactly_99_40_holds() -> None:
    assert holds(99.40) and holds(100 * 9940 / 10000) and not holds(99.39) and holds(99.41)


def test_verdict_on_hand_made_histories() -> None:
    good = [98.0] * 10 + [99.40, 99.45, 99.41, 99.50, 99.40]
    v = judge(7_900, good)
    assert v.met and consistent(v) and all(t.met for t in v.checks)
    dip = [98.0] * 10 + [99.40, 99.45, 99.39, 99.50, 99.40]
    v = judge(7_900, dip)
    assert not v.met and not consistent(v) and "min 99.39%" in str(v.to_dict())
    assert not judge(10_000, good).met  # "fewer than 10,000" is strict
    v = judge(8_066, good)
    assert v.met and not next(t for t in v.checks if t.name.startswith("bonus")).met
    assert not judge(5_000, [99.5] * 16).met  # more than 15 epochs


def test_fewer_than_k_epochs() -> None:
    v = judge(5_000, [99.5, 99.6, 99.7])
    assert not v.met and "only 3 epoch(s)" in str(v.to_dict())
    assert judge(5_000, [99.5, 99.6, 99.7], last_k=3).met


def test_first_epoch_holding() -> None:
    assert first_epoch_holding([99.0, 99.4, 99.3, 99.41, 99.5]) == 4
    assert first_epoch_holding([99.5, 99.5, 99.39]) is None
    assert first_epoch_holding([99.4]) == 1
    assert first_epoch_holding([]) is None


def test_holds_last_k_is_the_one_rule() -> None:
    assert holds_last_k([98.0, 99.4, 99.5, 99.41], 3) and not holds_last_k([99.4, 99.39, 99.5], 3)
    assert not holds_last_k([99.5, 99.5], 3)  # fewer epochs than K never hold


@pytest.mark.parametrize("passes,runs,lower,upper", [
    # Clopper-Pearson values as tabulated (e.g. scipy.stats.binomtest(k, n).proportion_ci("exact"))
    (10, 10, 0.6915, 1.0), (3, 5, 0.1466, 0.9473), (0, 5, 0.0, 0.5218), (9, 10, 0.5550, 0.9975),
    (5, 5, 0.4782, 1.0), (1, 1, 0.025, 1.0)])
def test_pass_interval_is_clopper_pearson(passes: int, runs: int, lower: float, upper: float) -> None:
    got = pass_interval(passes, runs)
    assert got == pytest.approx((lower, upper), abs=1e-4)


def test_fresh_seeds_skip_tuning_seeds_and_1_to_5() -> None:
    assert fresh_seeds(3) == [FIRST_FRESH_SEED, FIRST_FRESH_SEED + 1, FIRST_FRESH_SEED + 2]
    assert fresh_seeds(3, tuned=(1001, 1003)) == [1002, 1004, 1005]
    assert not set(fresh_seeds(50)) & set(range(1, 6))


def test_over_seeds_counts_passes_with_the_interval() -> None:
    rows = lambda accs: [{"test_acc": a} for a in accs]  # noqa: E731
    figures = over_seeds([7, 8], [rows([99.5] * 5), rows([99.5, 99.5, 99.39, 99.5, 99.5])], 3_000)
    assert figures["seeds_passing"] == 1 and figures["seeds_run"] == 2 and figures["min_last_k"] == 99.39
    assert figures["pass_interval"] == list(pass_interval(1, 2))
    assert [s["passed"] for s in figures["seeds"]] == [True, False]


@pytest.mark.parametrize("df,quantile", [(1, 12.7062), (4, 2.7764), (9, 2.2622), (19, 2.0930)])
def test_t_quantiles_as_tabulated(df: int, quantile: float) -> None:
    from tinymnist.targets import t_quantile

    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_mean_interval_of_paired_differences() -> None:
    from tinymnist.targets import mean_interval

    mean, low, high = mean_interval([0.1, 0.3, 0.2, 0.0, 0.4])  # mean 0.2, sd 0.1581, t(0.975, 4) 2.7764
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(mean - low)
    assert high - mean == pytest.approx(2.7764 * 0.158114 / 5 ** 0.5, abs=1e-4)
    with pytest.raises(ValueError):
        mean_interval([0.1])
