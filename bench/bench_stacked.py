"""Seeds at once on a CPU: how many seed-epochs a minute the machine trains, one seed per process (what
`tinymnist consistency --jobs N` does) against several seeds stacked into one model (bench/stacked_seeds.py).

    python bench/bench_stacked.py --json bench/results/cpu-stacked.json     # ~15 min on 2 cores
    python bench/bench_stacked.py --models sep_3k8 --steps 30 --repeats 1  # a quick look

Every configuration runs as whole processes started together (``processes`` x ``threads`` each, ``stack``
seeds per process) and times a training epoch of ``--steps`` batches after one such epoch as a warm-up, with
compact_step4's recipe (augmentation, SGD with Nesterov momentum), its model and batch size replaced, in fp32:
tinymnist's Trainer for one seed, bench/stacked_seeds.py's StackedTrainer for several; no evaluation. The images are
random uint8 pixels: the time of a step does not depend on them. Throughput is seed-images a second over all
processes, given as seed-epochs (60,000 images) a minute; medians over ``--repeats``, the configurations of a
model taken in turn within each repeat so that drift on a shared machine hits them alike. Writes JSON;
``python bench/performance_doc.py ...`` renders it into docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from stacked_seeds import StackedTrainer
from tinymnist.data import MNIST
from tinymnist.machine import cpu_name
from tinymnist.models import count_params, create_model
from tinymnist.steps.builtin import get_step
from tinymnist.training.engine import Trainer
from tinymnist.training.recipes import Options, RunSpec

MODELS = ["compact_7k4", "sep_3k8", "tiny:w=8.12.20.20.20,pool=2,sep=2"]  # the last: the 2k separable layout
# (processes, threads per process, seeds stacked per process); (n, 1, 1): n processes of one plain model each
CONFIGS = [(2, 1, 1), (1, 2, 1), (1, 2, 2), (1, 2, 4), (1, 2, 8), (2, 1, 2), (2, 1, 4)]
EPOCH = 60_000


def worker(model_name: str, seeds: int, threads: int, steps: int, batch: int) -> float:
    """Seed-images a second of an epoch of ``steps`` batches of ``seeds`` seeds (after one such epoch as a
    warm-up): tinymnist's Trainer for one seed, bench/stacked_seeds.py's StackedTrainer for several."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (steps * batch, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (steps * batch,), generator=generator)
    data = MNIST(train_images=images, train_labels=labels, held_out_images=images[:batch],
                 held_out_labels=labels[:batch])
    recipe = dataclasses.replace(get_step("compact_step4").recipe, model=model_name, batch_size=batch, epochs=2,
                                 cycle_epochs=2, seed=0)
    options = Options(device="cpu", threads=threads, precision="fp32")
    if seeds == 1:
        trainer = Trainer(RunSpec(recipe=recipe, options=options), data)
    else:
        trainer = StackedTrainer(recipe, data, range(seeds), options)
    trainer.train_epoch()
    start = time.perf_counter()
    trainer.train_epoch()
    return steps * batch * seeds / (time.perf_counter() - start)


def run_config(model_name: str, config: tuple[int, int, int], steps: int, batch: int) -> float:
    """Seed-images a second over the config's processes, started together."""
    processes, threads, seeds = config
    command = [sys.executable, __file__, "--worker", model_name, "--threads", str(threads), "--stack", str(seeds),
               "--steps", str(steps), "--batch", str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a worker failed: {' '.join(command)}")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)



def render_stacked(r: dict) -> list[str]:
    """bench_stacked.py's JSON: seed-epochs a minute, one plain model per process against seeds stacked."""
    lines = ["## Seeds at once, stacked: one model per process against several seeds in one model", "",
             f"- machine: {r['machine']}, torch {r['torch']}", f"- command: `{r['command']}` (bench/bench_stacked.py)",
             f"- per process, a timed training epoch of {r['steps']} batches of {r['batch']} images per seed after "
             f"one as a warm-up (compact_step4's recipe, augmentation included, fp32; no evaluation), the processes "
             f"started together; medians over {r['repeats']} interleaved repeats. One seed: the Trainer; several: "
             f"StackedTrainer (bench/stacked_seeds.py: every convolution grouped by seed)", "",
             "| model | processes x threads | seeds per process | seed-epochs a minute | vs 2 processes of one seed |",
             "|---|---|---|---|---|"]
    for model in dict.fromkeys(row["model"] for row in r["rows"]):
        rows = [row for row in r["rows"] if row["model"] == model]
        base = next((row["seed_epochs_per_minute"] for row in rows
                     if (row["processes"], row["threads"], row["seeds_per_process"]) == (2, 1, 1)), None)
        for row in rows:
            ratio = f"{row['seed_epochs_per_minute'] / base:.2f}x" if base else ""
            lines.append(f"| `{model}` ({row['params']:,}) | {row['processes']} x {row['threads']} | "
                         f"{row['seeds_per_process']} | {row['seed_epochs_per_minute']:.1f} | {ratio} |")
    return [*lines, ""]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--steps", type=int, default=100, help="batches of the timed epoch")
    parser.add_argument("--batch", type=int, default=64, help="images per seed per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--stack", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(worker(args.worker, args.stack, args.threads, args.steps, args.batch))
        return
    rows = []
    for model_name in args.models:
        rates: dict[tuple[int, int, int], list[float]] = {c: [] for c in CONFIGS}
        for repeat in range(args.repeats):
            for config in CONFIGS:
                rates[config].append(run_config(model_name, config, args.steps, args.batch))
                per_minute = rates[config][-1] * 60 / EPOCH
                print(f"{model_name} {config[0]} process(es) x {config[1]} thread(s), {config[2]} seed(s) each "
                      f"(repeat {repeat + 1}): {per_minute:.1f} seed-epochs a minute", flush=True)
        for (processes, threads, seeds), values in rates.items():
            rows.append({"model": model_name, "params": count_params(create_model(model_name)),
                         "processes": processes, "threads": threads, "seeds_per_process": seeds,
                         "seed_images_per_second": [round(v, 1) for v in values],
                         "seed_epochs_per_minute": round(statistics.median(values) * 60 / EPOCH, 2)})
    result = {"kind": "stacked", "machine": f"{cpu_name()} ({os.cpu_count()} cores)",
              "torch": torch.__version__, "python": platform.python_version(), "batch": args.batch,
              "steps": args.steps, "repeats": args.repeats,
              "command": "python bench/bench_stacked.py " + " ".join(sys.argv[1:]), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
