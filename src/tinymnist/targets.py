"""The problem's targets as code: < 10,000 parameters (bonus < 8,000), at most 15 epochs, and test
accuracy >= 99.40% in every one of the last K epochs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX_PARAMS, BONUS_PARAMS, MAX_EPOCHS, TARGET_ACC, LAST_K = 10_000, 8_000, 15, 99.40, 5


def holds(acc: float, target: float = TARGET_ACC) -> bool:
    """acc >= target, read at two decimals: accuracies are whole test images out of 10,000 (0.01% each)."""
    return round(acc, 6) >= target


@dataclass(frozen=True)
class Target:
    name: str
    met: bool
    measured: str


@dataclass(frozen=True)
class Verdict:
    targets: tuple[Target, ...]

    @property
    def met(self) -> bool:
        """All targets except the bonus."""
        return all(t.met for t in self.targets if not t.name.startswith("bonus"))

    def to_dict(self) -> dict:
        return {"met": self.met, "targets": [asdict(t) for t in self.targets]}


def first_epoch_holding(test_accs: list[float], target: float = TARGET_ACC) -> int | None:
    """The first (1-based) epoch from which every later epoch holds ``target``; None if the last does not."""
    first = None
    for epoch, acc in enumerate(test_accs, start=1):
        if not holds(acc, target):
            first = None
        elif first is None:
            first = epoch
    return first


def judge(params: int, test_accs: list[float], last_k: int = LAST_K) -> Verdict:
    """Judge a run's parameter count and per-epoch test accuracies against the targets."""
    tail = test_accs[-last_k:]
    if len(test_accs) < last_k:
        consistent = Target(f"test accuracy >= {TARGET_ACC:.2f}% in each of the last {last_k} epochs", False,
                            f"only {len(test_accs)} epoch(s) ran, fewer than {last_k}")
    else:
        consistent = Target(f"test accuracy >= {TARGET_ACC:.2f}% in each of the last {last_k} epochs",
                            all(holds(a) for a in tail), f"min {min(tail):.2f}% over epochs "
                            f"{len(test_accs) - last_k + 1}-{len(test_accs)}")
    return Verdict((
        Target(f"parameters < {MAX_PARAMS:,}", params < MAX_PARAMS, f"{params:,}"),
        Target(f"epochs <= {MAX_EPOCHS}", 0 < len(test_accs) <= MAX_EPOCHS, f"{len(test_accs)}"),
        consistent,
        Target(f"bonus: parameters < {BONUS_PARAMS:,}", params < BONUS_PARAMS, f"{params:,}"),
    ))
