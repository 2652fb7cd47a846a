"""The exercise's targets as code: < 10,000 parameters (bonus < 8,000), at most 15 epochs, and test accuracy
>= 99.40% in every one of the last K epochs; what "holds over seeds" means, and the seeds that may claim it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

MAX_PARAMS, BONUS_PARAMS, MAX_EPOCHS, TARGET_ACC, LAST_K = 10_000, 8_000, 15, 99.40, 5
TARGET = f"{TARGET_ACC:.2f}%"  # the accuracy target as every sentence writes it
CONFIDENCE = 0.95  # of the pass-rate interval
FIRST_FRESH_SEED = 1001  # confirmation seeds count up from here, skipping any seed a recipe was tuned on


def holds(acc: float, target: float = TARGET_ACC) -> bool:
    """acc >= target, read at two decimals: accuracies are whole test images out of 10,000 (0.01% each)."""
    return round(acc, 6) >= target


def holds_last_k(test_accs: list[float], last_k: int = LAST_K) -> bool:
    """The one rule: at least ``last_k`` epochs ran and each of the last ``last_k`` holds the target."""
    return len(test_accs) >= last_k and all(holds(a) for a in test_accs[-last_k:])


def first_epoch_holding(test_accs: list[float], target: float = TARGET_ACC) -> int | None:
    """The first (1-based) epoch from which every later epoch holds ``target``; None if the last does not."""
    first = None
    for epoch, acc in enumerate(test_accs, start=1):
        if not holds(acc, target):
            first = None
        elif first is None:
            first = epoch
    return first


@dataclass(frozen=True)
class Check:
    """One target checked against one run."""

    name: str
    met: bool
    measured: str


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def met(self) -> bool:
        """All checks except the bonus."""
        return all(c.met for c in self.checks if not c.name.startswith("bonus"))

    def to_dict(self) -> dict:
        return {"met": self.met, "checks": [asdict(c) for c in self.checks]}


def judge(params: int, test_accs: list[float], last_k: int = LAST_K) -> Verdict:
    """Judge a run's parameter count and per-epoch test accuracies against the targets."""
    name = f"test accuracy >= {TARGET} in each of the last {last_k} epochs"
    if len(test_accs) < last_k:
        consistent = Check(name, False, f"only {len(test_accs)} epoch(s) ran, fewer than {last_k}")
    else:
        consistent = Check(name, holds_last_k(test_accs, last_k), f"min {min(test_accs[-last_k:]):.2f}% over "
                           f"epochs {len(test_accs) - last_k + 1}-{len(test_accs)}")
    return Verdict((
        Check(f"parameters < {MAX_PARAMS:,}", params < MAX_PARAMS, f"{params:,}"),
        Check(f"epochs <= {MAX_EPOCHS}", 0 < len(test_accs) <= MAX_EPOCHS, f"{len(test_accs)}"),
        consistent,
        Check(f"bonus: parameters < {BONUS_PARAMS:,}", params < BONUS_PARAMS, f"{params:,}"),
    ))


# --- over seeds ------------------------------------------------------------------------------------------

def pass_interval(passes: int, runs: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval for a pass rate seen as ``passes`` out of ``runs``: it never
    claims more than the count shows, which matters at 10 of 10 (Wilson's interval is narrower there)."""
    if runs < 1 or not 0 <= passes <= runs:
        raise ValueError(f"{passes} passes out of {runs} runs")
    alpha = 1 - confidence

    def binomial(p: float, ks: range) -> float:
        return sum(math.comb(runs, k) * p ** k * (1 - p) ** (runs - k) for k in ks)

    def solve(increasing: Callable[[float], float], target: float) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):  # bisection to 1e-18
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if increasing(mid) < target else (lo, mid)
        return (lo + hi) / 2

    # lower: P(X >= passes) = alpha/2; upper: P(X <= passes) = alpha/2 (each tail is monotone in p)
    lower = 0.0 if passes == 0 else solve(lambda p: binomial(p, range(passes, runs + 1)), alpha / 2)
    upper = 1.0 if passes == runs else solve(lambda p: 1 - binomial(p, range(passes + 1)), 1 - alpha / 2)
    return lower, upper


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t with ``df`` degrees of freedom: bisection on its CDF, the
    density integrated by Simpson's rule on a substitution that keeps the heavy tail finite."""
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:  # P(T <= x) for x >= 0, through u = atan(t): dt = (1 + t^2) du
        def f(u: float) -> float:
            t = math.tan(u)
            return norm * (1 + t * t / df) ** (-(df + 1) / 2) * (1 + t * t)
        n, top = 2000, math.atan(x)
        h = top / n
        area = f(0) + f(top) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return 0.5 + area * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The mean of ``values`` (paired differences, say) with its two-sided t interval: (mean, low, high)."""
    if len(values) < 2:
        raise ValueError("an interval needs at least two values")
    mean = statistics.fmean(values)
    half = t_quantile(1 - (1 - confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def fresh_seeds(count: int, tuned: Iterable[int] = ()) -> list[int]:
    """``count`` confirmation seeds: FIRST_FRESH_SEED upwards, skipping the seeds a recipe was tuned on."""
    skip = set(tuned)
    seeds, seed = [], FIRST_FRESH_SEED
    while len(seeds) < count:
        if seed not in skip:
            seeds.append(seed)
        seed += 1
    return seeds


def over_seeds(seeds: list[int], histories: list[list[dict]], params: int, last_k: int = LAST_K) -> dict:
    """Per-seed last-K accuracies and passes, the pass count with its interval, and the accuracy figures."""
    per_seed = []
    for seed, history in zip(seeds, histories, strict=True):
        accs = [m["test_acc"] for m in history]
        per_seed.append({"seed": seed, f"last_{last_k}": accs[-last_k:], "min": min(accs[-last_k:]),
                         "final": accs[-1], "passed": holds_last_k(accs, last_k),
                         "first_holding": first_epoch_holding(accs)})
    finals = [s["final"] for s in per_seed]
    passes = sum(s["passed"] for s in per_seed)
    lower, upper = pass_interval(passes, len(per_seed))
    return {
        "params": params, "last_k": last_k, "seeds": per_seed,
        "seeds_passing": passes, "seeds_run": len(per_seed), "pass_interval": [lower, upper],
        "final_mean": statistics.fmean(finals), "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "min_last_k": min(s["min"] for s in per_seed),
    }
