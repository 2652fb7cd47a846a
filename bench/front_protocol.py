"""The 5,000-6,000 band by the exercise's own protocol: candidates chosen on the test set, then confirmed.

Cross-validation could not tell a holding recipe from one that is not (docs/search.md, "Cross-validated levels"),
so this study does what the exercise does, and says so: each candidate step in ``CANDIDATES`` (registered in
tinymnist.steps.builtin, all with band-4k-6k trial 10's recipe) trains on the selection seeds 1-3 and is scored
on the test files; the rule, fixed before any of them trained, picks the candidate with the highest mean over
those seeds of its lowest test accuracy in the last 5 epochs (ties: fewer parameters); that one trains on ten
fresh seeds (1001-1010). Every training is ``tinymnist consistency STEP --seed-list S --precision fp32
--threads 1 --runs RUNS``, a run record like any other; a finished run is reused, so a killed study resumes.

    python bench/front_protocol.py --runs runs-front --worker 0 --workers 2 &    # on core 0
    python bench/front_protocol.py --runs runs-front --worker 1 --workers 2 &    # on core 1
    python bench/front_protocol.py --runs runs-front --status                    # the table so far

Each worker trains the jobs whose index modulo ``--workers`` is ``--worker``; once every selection run is
finished, each applies the rule (they agree: it reads the same records) and trains its share of the fresh seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tinymnist.targets import LAST_K, holds

CANDIDATES = ("front_5k5", "front_pad_5k5", "front_fact_5k4", "front_rep_5k7", "front_wide_5k8", "front_deep_5k9")
SELECTION_SEEDS = (1, 2, 3)
FRESH_SEEDS = tuple(range(1001, 1011))


def summary(runs: Path, step: str, seed: int) -> dict | None:
    path = runs / step / f"seed-{seed}" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def selection_jobs() -> list[tuple[str, int]]:
    return [(step, seed) for seed in SELECTION_SEEDS for step in CANDIDATES]  # every candidate's seed 1 first


def scores(runs: Path) -> dict[str, tuple[float, int, int, int]]:
    """step -> (mean lowest last-5 test accuracy over its finished selection seeds, seeds passing, params, seeds
    finished)."""
    out = {}
    for step in CANDIDATES:
        done = [s for s in (summary(runs, step, seed) for seed in SELECTION_SEEDS) if s]
        if done:
            worst = [s["min_test_acc_last_5"] for s in done]
            out[step] = (statistics.mean(worst), sum(map(holds, worst)), done[0]["params"], len(done))
    return out


def chosen(runs: Path) -> str | None:
    """The rule: the highest mean lowest-last-5 test accuracy over seeds 1-3, fewer parameters on a tie; None
    until every selection run has finished."""
    table = scores(runs)
    if len(table) < len(CANDIDATES) or any(row[3] < len(SELECTION_SEEDS) for row in table.values()):
        return None
    return max(table, key=lambda step: (round(table[step][0], 6), -table[step][2]))


def train(runs: Path, step: str, seed: int) -> None:
    if summary(runs, step, seed):
        return
    cmd = [sys.executable, "-m", "tinymnist", "consistency", step, "--seed-list", str(seed), "--last-k", str(LAST_K),
           "--precision", "fp32", "--threads", "1", "--runs", str(runs)]
    print(time.strftime("%H:%M:%S"), " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--status", action="store_true", help="print the selection table and the choice, train nothing")
    args = parser.parse_args()
    if args.status:
        for step, (mean, passing, params, n) in scores(args.runs).items():
            print(f"{step:16} {params:6,} params  seeds {n}  mean lowest last-5 {mean:.3f}  passing {passing} of {n}")
        print("chosen:", chosen(args.runs) or "(not yet: every candidate needs seeds 1-3)")
        done = [s for step in CANDIDATES for seed in (*SELECTION_SEEDS, *FRESH_SEEDS)
                if (s := summary(args.runs, step, seed))]
        print(f"worker-hours: {sum(s['wall_seconds'] for s in done) / 3600:.2f} over {len(done)} trainings "
              f"(wall time of each, one thread)")
        return 0
    for i, (step, seed) in enumerate(selection_jobs()):
        if i % args.workers == args.worker:
            train(args.runs, step, seed)
    while (best := chosen(args.runs)) is None:
        time.sleep(30)
    print("chosen on the test set:", best, flush=True)
    for i, seed in enumerate(FRESH_SEEDS):
        if i % args.workers == args.worker:
            train(args.runs, best, seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
