"""Speed matrix: three ways of training the same model, interleaved in one run, across models, batch sizes and
precisions, plus each as a whole process (start-up included).

    python bench/bench_matrix.py --json bench/results/cpu-matrix.json            # the matrix (~20 min, 2 cores)
    python bench/bench_matrix.py --images 2000 --repeats 1 --models compact_7k4 --batches 64   # a quick look

The three pipelines, same model, plain SGD with momentum, one epoch each:
- tutorial: a per-image ``Dataset`` (uint8 -> normalized float one image at a time) through a ``DataLoader``,
  NCHW, fp32 (bench_train.py's baseline);
- peer: what a user writes in ten minutes with the images already a normalized float tensor in memory: a random
  permutation sliced into batches, NCHW, bf16 autocast for the bf16 column; no augmentation;
- tinymnist: the engine (tinymnist.training.executor.execute) with compact_step4's recipe, its model and batch size
  replaced, augmentation included, channels_last, uncompiled; "tinymnist-nchw" the same in NCHW
  (``--no-channels-last``), "tinymnist-compiled" the same with ``--compile on`` (the training step through
  torch.compile, channels_last). Each trains two epochs and the second is timed: the first carries the warm-up
  (the compiler's, a few seconds, which scaling to 60,000 images would multiply).
Each cell trains ``--images`` training images (seconds scaled to a 60,000-image epoch) and evaluates the 10,000
test images; medians over ``--repeats``, every pipeline of a model and batch size timed in turn within a repeat,
so drift on a shared machine hits them alike. ``--process`` also times, as separate processes, one full epoch
of compact_step4's model and batch size per pipeline, from the command to its exit: what a user waits for; for
tinymnist that is ``tinymnist train compact_step4 --epochs 1``, and its start-up is the wall time less the epoch
seconds the run recorded; the compiled one starts with an empty compiler cache (a first run's warm-up).
Writes JSON; ``python bench/performance_doc.py ...`` renders it into docs/performance.md.
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
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench_train import EPOCH, baseline_epoch, flops_per_image, peak_gflops, save_json
from tinymnist.data import load_mnist
from tinymnist.machine import cpu_name
from tinymnist.models import count_params, create_model
from tinymnist.steps.builtin import get_step
from tinymnist.training.executor import execute
from tinymnist.training.recipes import Options, RunSpec

MODELS = ["compact_7k4", "sep_3k8", "tiny:w=8.12.20.20.20,pool=2,sep=2"]  # the last: the 2k separable layout
ENGINES = {"tinymnist": {"compile": "off"}, "tinymnist-nchw": {"compile": "off", "channels_last": False},
           "tinymnist-compiled": {"compile": "on"}}  # Options for each way of running tinymnist's step
ENGINE_FLAGS = {name: ["--compile", o["compile"], *(["--no-channels-last"] if o.get("channels_last") is False else [])]
                for name, o in ENGINES.items()}  # the same, as `tinymnist train` flags


def peer_epoch(model_name: str, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
               batch_size: int, lr: float, precision: str) -> tuple[float, float]:
    """(train, eval) seconds of one epoch the in-memory way; ``x`` already normalized floats."""
    torch.manual_seed(0)
    model = create_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    start = time.perf_counter()
    model.train()
    perm = torch.randperm(len(y))
    for i in range(0, len(y), batch_size):
        idx = perm[i:i + batch_size]
        with autocast:
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    mid = time.perf_counter()
    model.eval()
    with torch.no_grad(), autocast:
        for i in range(0, len(test_y), 1000):
            model(test_x[i:i + 1000]).argmax(1).eq(test_y[i:i + 1000]).sum()
    return mid - start, time.perf_counter() - mid


def tinymnist_epoch(model_name: str, data, batch_size: int, precision: str, threads: int,
                    engine: str = "tinymnist") -> tuple[float, float]:
    """(train, eval) seconds of the second of two epochs (the first warms up)."""
    recipe = dataclasses.replace(get_step("compact_step4").recipe, model=model_name, batch_size=batch_size, epochs=2,
                                 cycle_epochs=None)
    options = Options(precision=precision, threads=threads, **ENGINES[engine])
    m = execute(RunSpec(recipe=recipe, options=options), data).history[1]
    return m["train_seconds"], m["eval_seconds"]


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    full = load_mnist(args.data_dir, allow_download=False)
    data = full.subset(args.images)
    x, test_x = data.normalize(data.train_images), data.normalize(data.held_out_images)
    scale = EPOCH / len(data.train_labels)
    lr = get_step("compact_step4").recipe.lr
    engines = args.engines
    pipelines = [("tutorial", "fp32")] + [(p, prec) for p in ("peer", *engines) for prec in args.precisions]
    cells: dict[str, dict] = {}
    for model in args.models:
        for batch in args.batches:
            for pipe, prec in pipelines:
                cells[f"{model}|{batch}|{pipe}|{prec}"] = {"model": model, "batch_size": batch, "pipeline": pipe,
                                                          "precision": prec, "train": [], "eval": []}
    for _ in range(args.repeats):
        for cell in cells.values():
            m, b, pipe, prec = cell["model"], cell["batch_size"], cell["pipeline"], cell["precision"]
            if pipe == "tutorial":
                tr, ev = baseline_epoch(m, data, b, lr)
            elif pipe == "peer":
                tr, ev = peer_epoch(m, x, data.train_labels, test_x, data.held_out_labels, b, lr, prec)
            else:
                tr, ev = tinymnist_epoch(m, data, b, prec, args.threads, pipe)
            cell["train"].append(tr * scale)
            cell["eval"].append(ev)
            print(f"{m} batch {b} {pipe} {prec}: {tr * scale:.1f} s train per epoch, {ev:.1f} s eval", flush=True)
    models = {}
    for model in args.models:
        train_flops, eval_flops = flops_per_image(model)
        models[model] = {"params": count_params(create_model(model)), "train_flops_per_image": train_flops,
                         "eval_flops_per_image": eval_flops}
    for cell in cells.values():
        cell["train_seconds"], cell["eval_seconds"] = statistics.median(cell["train"]), statistics.median(cell["eval"])
    result = {"kind": "matrix", "cpu": f"{cpu_name()} ({os.cpu_count()} cores)", "threads": args.threads,
              # the vector instructions torch's CPU kernels use here (AVX2, AVX512...): hosts sold under one
              # name differ in them, and bf16 is fast only where the CPU has bf16 instructions
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "platform": platform.platform(), "command": "python " + " ".join(sys.argv),
              "images": len(data.train_labels), "second_epoch": True, "repeats": args.repeats,
              "peak_gflops": peak_gflops(),
              "models": models, "cells": list(cells.values())}
    if args.process:
        result["process"] = measure_processes(args)
    return result


PEER_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from bench_matrix import peer_epoch
from tinymnist.data import load_mnist
torch.set_num_threads({threads})
d = load_mnist({data_dir!r}, allow_download=False)
peer_epoch({model!r}, d.normalize(d.train_images), d.train_labels, d.normalize(d.held_out_images), d.held_out_labels,
           {batch}, 0.2, "fp32")
"""
TUTORIAL_SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
from bench_train import baseline_epoch
from tinymnist.data import load_mnist
torch.set_num_threads({threads})
baseline_epoch({model!r}, load_mnist({data_dir!r}, allow_download=False), {batch}, 0.2)
"""


def measure_processes(args: argparse.Namespace) -> dict:
    """Whole processes, one full epoch each of compact_step4's model and batch size, fp32: wall seconds from the
    command to its exit (medians over --repeats, interleaved); tinymnist's start-up is its wall less the epoch
    seconds its run recorded. The compiled engine runs twice a repeat: with an empty compiler cache, then again
    with the cache that run left ("tinymnist-compiled-warm", what a second run of the same model meets)."""
    recipe = get_step("compact_step4").recipe
    fmt = {"bench": str(Path(__file__).parent), "threads": args.threads, "data_dir": args.data_dir,
           "model": recipe.model, "batch": recipe.batch_size}
    engines = list(args.engines) + (["tinymnist-compiled-warm"] if "tinymnist-compiled" in args.engines else [])
    walls: dict[str, list[float]] = {p: [] for p in ("tutorial", "peer", *engines)}
    startup: dict[str, list[float]] = {p: [] for p in engines}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            for pipe in walls:
                with tempfile.TemporaryDirectory() as out:
                    # empty for every run of the repeat but the warm one, which follows the cold compiled run
                    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                    if pipe in engines:
                        cmd = ["tinymnist", "train", "compact_step4", "--epochs", "1", "--precision", "fp32",
                               "--threads", str(args.threads), "--runs", out, "--no-download",
                               *ENGINE_FLAGS[pipe.removesuffix("-warm")],
                               *(["--data-dir", args.data_dir] if args.data_dir else [])]
                    else:
                        cmd = [sys.executable, "-c",
                               (PEER_SCRIPT if pipe == "peer" else TUTORIAL_SCRIPT).format(**fmt)]
                    start = time.perf_counter()
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
                    walls[pipe].append(time.perf_counter() - start)
                    if pipe in engines:
                        (metrics,) = Path(out).glob("*/seed-*/metrics.jsonl")
                        epoch = json.loads(metrics.read_text().splitlines()[-1])
                        startup[pipe].append(walls[pipe][-1] - epoch["train_seconds"] - epoch["eval_seconds"])
                print(f"whole process, {pipe}: {walls[pipe][-1]:.1f} s", flush=True)
    result = {"model": recipe.model, "batch_size": recipe.batch_size, "precision": "fp32",
              "wall_seconds": {k: statistics.median(v) for k, v in walls.items()}, "samples": walls,
              "startup_seconds": {k: statistics.median(v) for k, v in startup.items()}, "startup_samples": startup}
    return result



MATRIX_PIPELINES = ["tutorial", "peer", "tinymnist", "tinymnist-nchw", "tinymnist-compiled"]


def render_matrix(r: dict) -> list[str]:
    """bench_matrix.py's JSON: seconds per 60,000-image epoch (train + eval) per model, batch and pipeline; each
    way of running tinymnist's step against the tutorial, and against the uncompiled channels_last one."""
    cells = {(c["model"], c["batch_size"], c["pipeline"], c["precision"]): c for c in r["cells"]}
    columns = sorted({(c["pipeline"], c["precision"]) for c in r["cells"]},
                     key=lambda pc: (MATRIX_PIPELINES.index(pc[0]), pc[1]))
    engines = [p for p in MATRIX_PIPELINES[2:] if any(c["pipeline"] == p for c in r["cells"])]
    # the precision the ratios compare in: fp32 where the run has it (the tutorial is always fp32)
    precisions = {c["precision"] for c in r["cells"] if c["pipeline"] != "tutorial"}
    prec = "fp32" if "fp32" in precisions else min(precisions)
    epoch = lambda c: c["train_seconds"] + c["eval_seconds"]  # noqa: E731
    ratio = lambda a, b: f"{epoch(a) / epoch(b):.2f}x" if a and b else ""  # noqa: E731
    heads = [f"{e} {prec} vs tutorial" for e in engines] + [f"tinymnist {prec} vs peer {prec}"] + \
        [f"{e} vs tinymnist" for e in engines[1:]] + ["best x FLOP floor"]
    compiled_note = ("; tinymnist-nchw: the same in NCHW (`--no-channels-last`)" if "tinymnist-nchw" in engines
                     else "") + ("; tinymnist-compiled: the same with `--compile on` (torch.compile, channels_last)"
                                 if "tinymnist-compiled" in engines else "")
    second = "; tinymnist's epoch is the second of two (the first warms up)" if r.get("second_epoch") else ""
    threads = f"{r['threads']} thread{'s' * (r['threads'] > 1)}"
    lines = [f"## Speed matrix, {threads}, {'/'.join(sorted(precisions))}: tutorial, in-memory peer and tinymnist, "
             f"per model and batch", "",
             f"- machine: {r['cpu']}{', ' + r['cpu_capability'] + ' kernels' if r.get('cpu_capability') else ''}, "
             f"{r['threads']} thread{'s' * (r['threads'] > 1)}, torch {r['torch']}",
             f"- command: `{r['command']}` (bench/bench_matrix.py)",
             f"- seconds per epoch: training {r['images']:,} images scaled to 60,000, plus evaluating the 10,000 "
             f"test images; medians over {r['repeats']} interleaved repeats. tutorial: per-image Dataset + "
             f"DataLoader, NCHW; peer: the images a float tensor in memory, batches sliced from a permutation, "
             f"NCHW, no augmentation; tinymnist: the engine with compact_step4's recipe (augmentation included), "
             f"channels_last{compiled_note}{second}", "",
             "| model | batch | " + " | ".join(f"{p} {q}" for p, q in columns) + " | " + " | ".join(heads) + " |",
             "|---|---|" + "---|" * (len(columns) + len(heads))]
    for model, info in r["models"].items():
        floor = (info["train_flops_per_image"] * EPOCH + info["eval_flops_per_image"] * 10_000) / \
            (r["peak_gflops"] * 1e9)
        for batch in sorted({c["batch_size"] for c in r["cells"] if c["model"] == model}):
            row = [cells.get((model, batch, p, q)) for p, q in columns]
            tut = cells.get((model, batch, "tutorial", "fp32"))
            peer, *ours = (cells.get((model, batch, p, prec)) for p in ("peer", *engines))
            found = [c for c in ours if c]
            values = [ratio(tut, c) for c in ours] + [ratio(peer, ours[0])] + [ratio(ours[0], c) for c in ours[1:]] \
                + [f"{min(map(epoch, found)) / floor:.1f}" if found else ""]
            lines.append(f"| `{model}` ({info['params']:,}) | {batch} | "
                         + " | ".join(f"{epoch(c):.1f}" if c else "" for c in row) + " | " + " | ".join(values) + " |")
    lines.append("")
    dense, models = "compact_7k4", list(r["models"])
    for engine in engines:
        for model in models:
            if model == dense or dense not in r["models"] or r["models"][model]["params"] > 2_500:
                continue
            for batch in sorted({c["batch_size"] for c in r["cells"] if c["model"] == model}):
                a, b = cells.get((model, batch, engine, prec)), cells.get((dense, batch, engine, prec))
                if a and b:
                    met = "met" if epoch(a) <= epoch(b) else "missed"
                    lines.append(f"- `{model}` ({r['models'][model]['params']:,} params) no slower per epoch than "
                                 f"{dense} at batch {batch} ({engine}, {prec}): **{met}** ({epoch(a):.1f} s against "
                                 f"{epoch(b):.1f} s)")
    proc = r.get("process")
    if proc:
        lines += render_processes(proc)
    return [*lines, ""]


def render_processes(proc: dict) -> list[str]:
    """bench_matrix.py --process: whole processes, one full epoch each, from the command to its exit."""
    w = proc["wall_seconds"]
    startup = proc["startup_seconds"]
    engines = [p for p in w if p not in ("tutorial", "peer")]
    name = {"tinymnist": "tinymnist (`tinymnist train compact_step4 --epochs 1`)",
            "tinymnist-nchw": "tinymnist-nchw (the same with `--no-channels-last`)",
            "tinymnist-compiled": "tinymnist-compiled (the same with `--compile on`, cold compiler cache)",
            "tinymnist-compiled-warm": "tinymnist-compiled-warm (the same again, with the cache the cold run left)"}
    lines = ["", f"Whole processes, one full epoch of `{proc['model']}` at batch {proc['batch_size']}, "
                 f"{proc['precision']}, from the command to its exit (medians over "
                 f"{len(proc['samples']['tutorial'])}); start-up is the wall less the epoch the run recorded:", "",
             "| tutorial | peer | " + " | ".join(name[e] for e in engines) + " | "
             + " | ".join(f"{e} start-up" for e in engines) + " |", "|---|---|" + "---|" * (2 * len(engines)),
             f"| {w['tutorial']:.1f} s | {w['peer']:.1f} s | " + " | ".join(f"{w[e]:.1f} s" for e in engines) + " | "
             + " | ".join(f"{startup[e]:.1f} s" for e in engines) + " |", ""]
    if "tinymnist-compiled" in w and "tinymnist" in w:
        lines.append(f"- the compiled process took {w['tinymnist-compiled'] - w['tinymnist']:+.1f} s against the "
                     f"uncompiled one: the compiler's warm-up with an empty cache, less one epoch's gain")
    if "tinymnist-compiled-warm" in w and "tinymnist" in w:
        lines.append(f"- with the compiler's cache a previous run of the same model left: "
                     f"{w['tinymnist-compiled-warm'] - w['tinymnist']:+.1f} s against the uncompiled process")
    for e in engines:
        lines.append(f"- {e} >= 2x the tutorial pipeline as a whole process: "
                     f"**{'met' if w['tutorial'] / w[e] >= 2 else 'missed'}** "
                     f"({w['tutorial'] / w[e]:.2f}x; against the peer {w['peer'] / w[e]:.2f}x)")
    return lines

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help="tinymnist's ways of running a step (default: all three)")
    parser.add_argument("--images", type=int, default=10_000, help="training images per timed epoch (scaled)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--process", action="store_true", help="also time whole processes (full epochs)")
    parser.add_argument("--data-dir", default=os.environ.get("TINYMNIST_DATA"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = measure(args)
    save_json(result, args.json)
    print("\n".join(render_matrix(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
