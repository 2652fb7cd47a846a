"""The focused study of the 4,000-6,000 band: cross-validated levels of a few chosen recipes.

Each job trains one recipe on one fold of the training files (fold k holds out its own 10,000 images and trains
on the other 50,000; fold 0 is the search's split) with one seed, and appends one JSON line to ``--out``: the
recipe, the fold, every epoch's validation accuracy, the level (mean of the last 5) and the machine. Jobs already
in ``--out`` are skipped, so a killed study resumes where it stopped (the job in flight is trained again). The
test files are never opened.

    python bench/front_study.py --out evidence/studies/front-5k.jsonl            # every job, in order
    python bench/front_study.py --out evidence/studies/front-5k.jsonl --list     # what is done and what is left
    python bench/front_study.py --out ... --plan plan.json    # the order of a JSON list of [recipe, fold, seed]
    python bench/front_study.py --out ... --plan plan.json --worker 1 --workers 2   # the odd places of the plan

Candidates use the levers of small public models at about trial 10's size (5,480 parameters); the calibration
recipes are those whose fresh-seed test outcome is committed (evidence/studies/calibrate-*.json and the
searched trials that were confirmed), trained on folds 1 and 2 (fold 0 is in their exports).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tinymnist.data import load_validation_split
from tinymnist.machine import cpu_name
from tinymnist.models import count_params
from tinymnist.search.analysis import read_exports
from tinymnist.search.study import trial_recipe
from tinymnist.training.executor import Callbacks, execute
from tinymnist.training.recipes import Options, Recipe, RunSpec

LAST_K = 5
FOLDS = (0, 1, 2)
BASELINE = ("band-4k-6k", 10)  # 5,480 params: compact_step4's augmentation, weight averaging, SGD one-cycle at 0.2
CANDIDATES = {  # name -> model, each with the recipe of BASELINE; the lever beside the tiny layout of its size
    "pad": "tiny:w=8.32.24.24.24,pool=2,sep=3,sq=0,pad=2",  # 5,480: trial 10 with padding 1 in layers 1-2
    "share": "tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3",  # 5,528: the last separable block applied 3 times
    "share-bn": "tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3,repbn=1",  # 5,656: the same, a BatchNorm per application
    "fact": "tiny:w=12.40.24.24.24,pool=2,sep=3,sq=0,fact=2",  # 5,372: layer 2 factorized 3x1 + 1x3
    "pad-share": "tiny:w=8.32.32.32,pool=2,sep=3,sq=0,rep=3,pad=2",  # 5,528: both
    "wide": "tiny:w=8.32.26.26.26,pool=2,sep=3,sq=0",  # 5,812: trial 10's separable layers 26 wide (front_wide_5k8)
    "deep": "tiny:w=8.28.24.24.24.24,pool=2,sep=3,sq=0",  # 5,892: a fourth separable layer (front_deep_5k9)
}
BAND_BEST = {  # name -> (study export, trial): a band's best screened recipe without a fresh-seed outcome
    "band-4k-6k trial 1": ("band-4k-6k", 1),  # 4,344: the best 4,001-5,000 screen of band-4k-6k
}
CALIBRATION = {  # name -> (study export, trial): recipes with committed fresh-seed test outcomes
    "compact_step4": ("calibrate-compact-step4", 0),
    "band-4k-6k trial 10": ("band-4k-6k", 10),
    "frontier-4k trial 13": ("frontier-4k", 13),
    "frontier_sep_3k8": ("calibrate-frontier-sep-3k8", 2),
    "frontier-2k5 trial 59": ("calibrate-frontier-2k5-trial-59", 0),
}


def recipe_of(name: str, exports: Path) -> Recipe:
    study, trial = BASELINE if name in CANDIDATES else {**CALIBRATION, **BAND_BEST}[name]
    recipe = trial_recipe(read_exports([exports / f"{study}.json"])[0], trial)
    return dataclasses.replace(recipe, model=CANDIDATES[name]) if name in CANDIDATES else recipe


def plan() -> list[tuple[str, int, int]]:
    """(recipe, fold, seed) in the order they train: each candidate screened on fold 0, then the calibration's
    folds 1-2 of the three fastest recipes, then the candidates' folds 1-2, then the rest of the calibration."""
    jobs = [(c, 0, 1) for c in CANDIDATES]
    jobs += [(c, f, 1) for c in ("band-4k-6k trial 10", "frontier-4k trial 13", "compact_step4") for f in (1, 2)]
    jobs += [(c, f, 1) for c in CANDIDATES for f in (1, 2)]
    jobs += [(c, f, 1) for c in ("frontier_sep_3k8", "frontier-2k5 trial 59") for f in (1, 2)]
    return jobs


def ordered(plan_file: Path | None) -> list[tuple[str, int, int]]:
    """The jobs in the order ``plan_file`` (JSON: [[recipe, fold, seed], ...]) gives, read again before every job
    so that a running study can be steered; plan() when there is none."""
    if plan_file is None or not plan_file.exists():
        return plan()
    return [(name, int(fold), int(seed)) for name, fold, seed in json.loads(plan_file.read_text())]


def done(out: Path) -> set[tuple[str, int, int]]:
    if not out.exists():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["name"], r["fold"], r["seed"]) for r in rows}


def train(name: str, fold: int, seed: int, exports: Path, data_dir: str | None) -> dict:
    recipe = dataclasses.replace(recipe_of(name, exports), seed=seed)
    data = load_validation_split(data_dir, fold=fold)
    options = Options(device="cpu", precision="fp32", threads=1)
    spec = RunSpec(recipe=recipe, options=options, held_out="validation", tuned_seeds=(seed,))
    accs: list[float] = []

    def on_epoch(metrics: dict) -> None:
        accs.append(metrics["val_acc"])
        print(f"  {name} fold {fold} seed {seed}: epoch {len(accs)} val {metrics['val_acc']:.2f}", flush=True)

    started = time.perf_counter()
    trainer = execute(spec, data, [Callbacks(on_epoch=on_epoch)])
    last = accs[-LAST_K:]
    return {"name": name, "fold": fold, "seed": seed, "model": recipe.model, "params": count_params(trainer.model),
            "recipe": dataclasses.asdict(recipe), "val_acc": accs, "level": round(statistics.fmean(last), 4),
            "worst": min(last), "seconds": round(time.perf_counter() - started, 1), "cpu": cpu_name(),
            "threads": torch.get_num_threads(), "precision": "fp32", "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per finished job (appended)")
    p.add_argument("--exports", type=Path, default=Path("evidence/studies"), help="where the study exports are")
    p.add_argument("--data-dir", default=os.environ.get("TINYMNIST_DATA"))
    p.add_argument("--plan", type=Path, help="JSON list of [recipe, fold, seed], read before each job")
    p.add_argument("--list", action="store_true", help="say what is done and what is left, train nothing")
    p.add_argument("--worker", type=int, default=0, help="with --workers N: train the jobs whose place in the "
                   "plan is this modulo N (each worker on a core of its own)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    if args.list:
        for job in ordered(args.plan):
            print(("done  " if job in done(args.out) else "left  ") + " ".join(map(str, job)))
        return 0
    while left := [job for i, job in enumerate(ordered(args.plan))
                   if i % args.workers == args.worker and job not in done(args.out)]:
        row = train(*left[0], args.exports, args.data_dir)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['name']} fold {row['fold']}: level {row['level']:.3f}, {row['params']:,} params, "
              f"{row['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
