"""One epoch of a step's recipe trained by two source trees of tinymnist in one process, alternately: a change to
the engine (the "after" tree) against the code it changes (the "before" tree), paired so that drift on a shared
machine hits both alike.

    taskset -c 1 python bench/bench_before_after.py --before /work/main/src --after src \\
        --json bench/results/cpu-before-after.json

Both trees are imported into the one process under the name ``tinymnist`` in turn (each keeps its own module
objects), and each repeat trains one epoch with each tree, the order alternating repeat by repeat: the epoch's
CPU seconds of the process (building the Trainer, training, evaluating: what other processes on a shared core
do not inflate), and its wall training seconds (augmentation included) and evaluation seconds, one thread, fp32,
uncompiled, after an untimed warm-up epoch of 2,048 images by each. Medians over ``--repeats``.
Writes JSON; ``python bench/performance_doc.py ...`` renders it into docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def import_tree(src: Path) -> SimpleNamespace:
    """The tinymnist package of the source tree ``src``, imported afresh; the modules stay with the result."""
    for name in [m for m in sys.modules if m == "tinymnist" or m.startswith("tinymnist.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        import tinymnist.data as data
        import tinymnist.machine as machine
        import tinymnist.steps.builtin as builtin
        import tinymnist.training.executor as executor
        import tinymnist.training.recipes as recipes
    finally:
        sys.path.remove(str(src))
    return SimpleNamespace(src=str(src), data=data, machine=machine, builtin=builtin, executor=executor,
                           recipes=recipes)


def epoch(tree: SimpleNamespace, step: str, mnist: object) -> dict:
    """One epoch of ``step``'s recipe trained by ``tree`` (its own data objects): its metrics."""
    recipe = dataclasses.replace(tree.builtin.get_step(step).recipe, epochs=1, cycle_epochs=None)
    options = tree.recipes.Options(device="cpu", threads=1, precision="fp32", compile="off")
    spec = tree.recipes.RunSpec(recipe=recipe, options=options)
    cpu = time.process_time()
    metrics = tree.executor.execute(spec, mnist).history[0]
    return {**metrics, "cpu_seconds": time.process_time() - cpu}


def git_commit(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the src/ folder of the code before")
    parser.add_argument("--after", type=Path, required=True, help="the src/ folder of the code after")
    parser.add_argument("--step", default="compact_step4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = {"before": import_tree(args.before.resolve()), "after": import_tree(args.after.resolve())}
    data = {k: t.data.load_mnist(allow_download=False) for k, t in trees.items()}
    for k, tree in trees.items():  # warm-up, untimed: the libraries' one-time set-up is paid by neither
        epoch(tree, args.step, data[k].subset(2048, 500))
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for repeat in range(args.repeats):
        for k in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            runs[k].append(epoch(trees[k], args.step, data[k]))
    result = {
        "kind": "before_after", "step": args.step, "repeats": args.repeats, "threads": 1,
        "machine": trees["after"].machine.cpu_name(), "torch": __import__("torch").__version__,
        "python": platform.python_version(),
        "command": f"taskset -c 1 python bench/bench_before_after.py --before {args.before} --after {args.after} "
                   f"--repeats {args.repeats}" + (f" --json {args.json}" if args.json else ""),
        "commits": {k: git_commit(args.before if k == "before" else args.after) for k in runs},
        "trees": {k: {"cpu_seconds": [m["cpu_seconds"] for m in ms], "train_seconds": [m["train_seconds"] for m in ms],
                      "eval_seconds": [m["eval_seconds"] for m in ms],
                      "train_loss": ms[0]["train_loss"], "test_acc": ms[0]["test_acc"]} for k, ms in runs.items()},
    }
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def render_before_after(r: dict) -> list[str]:
    """bench_before_after.py's JSON: the epoch's seconds by each tree, medians, and the ratio."""
    keys = ("cpu_seconds", "train_seconds", "eval_seconds")
    med = {k: {s: statistics.median(v[s]) for s in keys} for k, v in r["trees"].items()}
    lines = [f"## One epoch of {r['step']}: the engine before and after", "",
             f"- machine: {r['machine']}, torch {r['torch']}, {r['threads']} thread, fp32, uncompiled",
             f"- command: `{r['command']}` (bench/bench_before_after.py)",
             f"- both source trees trained in one process, alternately, {r['repeats']} epochs each (medians); before: "
             f"commit {r['commits']['before']}, after: commit {r['commits']['after']}", "",
             "| code | CPU seconds (the whole epoch) | wall seconds, training | wall seconds, evaluation "
             "| train loss | test accuracy |", "|---|---|---|---|---|---|"]
    for k in ("before", "after"):
        t = r["trees"][k]
        lines.append(f"| {k} | {med[k]['cpu_seconds']:.2f} | {med[k]['train_seconds']:.2f} | "
                     f"{med[k]['eval_seconds']:.3f} | {t['train_loss']:.6f} | {t['test_acc']:.2f}% |")
    cpu = med["after"]["cpu_seconds"] / med["before"]["cpu_seconds"]
    wall = med["after"]["train_seconds"] / med["before"]["train_seconds"]
    lines += ["", f"After / before: {cpu:.3f}x in CPU seconds, {wall:.3f}x in wall training seconds. Per repeat "
              f"(CPU seconds, before / after): " + ", ".join(
                  f"{b:.1f} / {a:.1f}" for b, a in zip(r["trees"]["before"]["cpu_seconds"],
                                                       r["trees"]["after"]["cpu_seconds"], strict=True)) + ".", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
