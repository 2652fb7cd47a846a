from __future__ import annotations

from tinymnist.targets import first_epoch_holding, holds, judge


def consistent(verdict) -> bool:  # noqa: ANN001
    return next(t for t in verdict.targets if "last" in t.name).met


def test_exactly_99_40_holds() -> None:
    assert holds(99.40) and holds(100 * 9940 / 10000) and not holds(99.39) and holds(99.41)


def test_verdict_on_hand_made_histories() -> None:
    good = [98.0] * 10 + [99.40, 99.45, 99.41, 99.50, 99.40]
    v = judge(7_900, good)
    assert v.met and consistent(v) and all(t.met for t in v.targets)
    dip = [98.0] * 10 + [99.40, 99.45, 99.39, 99.50, 99.40]
    v = judge(7_900, dip)
    assert not v.met and not consistent(v) and "min 99.39%" in str(v.to_dict())
    assert not judge(10_000, good).met  # "fewer than 10,000" is strict
    v = judge(8_066, good)
    assert v.met and not next(t for t in v.targets if t.name.startswith("bonus")).met
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
