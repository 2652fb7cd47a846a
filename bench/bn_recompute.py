"""Weight averaging and BatchNorm: averaged statistics (what the engine keeps) against statistics recomputed on
the training images for the averaged weights (torch.optim.swa_utils.update_bn), on finished runs.

    python bench/bn_recompute.py RUN_DIR... --json evidence/bn-recompute/compact_step4-ema.json

For each finished run trained with ``ema``: the test accuracy of its saved model (the average, with averaged
BatchNorm statistics: the run's recorded final accuracy), then the same weights with the running statistics
reset and recomputed over every training image (no augmentation, batches of 1,000, a cumulative average), and
their difference; over the runs, the mean difference with its 95% t interval. Only the final epoch can be
measured: a run keeps the weights of its last epoch alone. Needs the run directories with their weights
(not committed); the JSON it writes is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from bench_train import save_json
from tinymnist.data import load_mnist
from tinymnist.runs.loading import load_model
from tinymnist.runs.records import RunRecord
from tinymnist.targets import mean_interval
from tinymnist.use.inference import _feed, evaluate_loaded


def measure(run: RunRecord, data, batch: int = 1000) -> dict:
    loaded = load_model(run)
    averaged = evaluate_loaded(loaded, data.held_out_images, data.held_out_labels, "cpu").acc
    _, model, inputs, cast = _feed(loaded, "cpu")
    with cast():
        update_bn((inputs(data.train_images[i:i + batch]) for i in range(0, len(data.train_labels), batch)), model)
    recomputed = evaluate_loaded(loaded, data.held_out_images, data.held_out_labels, "cpu").acc
    return {"run": str(run.path), "seed": run.recipe().seed, "recorded": run.summary()["last_test_acc"],
            "averaged": averaged, "recomputed": recomputed, "difference": recomputed - averaged}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--json")
    args = parser.parse_args()
    data = load_mnist(args.data_dir, allow_download=False)
    torch.set_num_threads(1)
    rows = []
    for path in args.runs:
        run = RunRecord(path)
        if not run.recipe().ema:
            print(f"{path}: trained without weight averaging; left out", file=sys.stderr)
            continue
        rows.append(measure(run, data))
        r = rows[-1]
        print(f"seed {r['seed']}: recorded {r['recorded']:.2f}, averaged statistics {r['averaged']:.2f}, "
              f"recomputed {r['recomputed']:.2f} ({r['difference']:+.2f})", flush=True)
    diffs = [r["difference"] for r in rows]
    mean, low, high = mean_interval(diffs)
    result = {"command": "python " + " ".join(sys.argv), "runs": rows, "mean_difference": mean, "interval": [low, high],
              "recomputed_better": sum(d > 0 for d in diffs), "averaged_better": sum(d < 0 for d in diffs)}
    print(f"recomputed - averaged statistics, final test accuracy over {len(rows)} runs: "
          f"{result['mean_difference']:+.3f} points (95% t interval {low:+.3f} to {high:+.3f}); recomputed better on "
          f"{result['recomputed_better']}, averaged on {result['averaged_better']}")
    save_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
