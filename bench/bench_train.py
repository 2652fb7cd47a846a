"""Training-speed benchmark: tinymnist's pipeline against a conventional per-image DataLoader baseline.

    python bench/bench_train.py --step original_step4 --json bench/results/cpu-original_step4.json
    python bench/bench_train.py --step compact_step4 --parallel 4 --json bench/results/cpu-parallel-compact_step4.json
    python bench/bench_train.py --step compact_step4 --profile --json bench/results/cpu-profile-compact_step4.json
    python bench/bench_train.py --doc docs/performance.md bench/results/*.json   # regenerate the doc

For each configuration it measures training images/s, seconds per epoch (train and eval separately, medians
over --repeats one-epoch runs), the wall time of the full recipe (--full), peak memory, FLOPs per image
(torch.utils.flop_counter) and the achieved GFLOP/s; in the same run it times the baseline (a Dataset that
returns one image at a time with per-image transforms, through a DataLoader, same model and batch size) and
reports each configuration as a ratio to it. The FLOP floor is the epoch's FLOPs divided by the peak fp32
GFLOP/s these cores reach on a large matrix multiply, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from tinymnist.data import load_mnist
from tinymnist.machine import cpu_name
from tinymnist.models import count_params, create_model
from tinymnist.runs.runner import run_seeds
from tinymnist.steps.builtin import get_step
from tinymnist.training.executor import Sink, execute
from tinymnist.training.recipes import Options, RunSpec


class PerImageMNIST(Dataset):
    """The tutorial way: one image at a time, converted and normalized in Python (ToTensor + Normalize)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i].copy()).float().div(255).unsqueeze(0)
        return (x - self.mean) / self.std, int(self.labels[i])


def baseline_epoch(model_name: str, data, batch_size: int, lr: float) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train = DataLoader(PerImageMNIST(data.train_images, data.train_labels, data.mean, data.std),
                       batch_size=batch_size, shuffle=True)
    test = DataLoader(PerImageMNIST(data.held_out_images, data.held_out_labels, data.mean, data.std),
                      batch_size=batch_size)
    start = time.perf_counter()
    model.train()
    for x, y in train:
        loss = nn.functional.nll_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mid = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for x, y in test:
            model(x).argmax(1).eq(y).sum()
    return mid - start, time.perf_counter() - mid


def flops_per_image(model_name: str) -> tuple[float, float]:
    """(training, inference) FLOPs per image: forward + backward, and forward alone."""
    model = create_model(model_name)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as both:
        nn.functional.nll_loss(model(x), y).backward()
    del out
    return both.get_total_flops() / 64, fwd.get_total_flops() / 64


def peak_gflops(seconds: float = 3.0) -> float:
    """The best fp32 GFLOP/s of a large matrix multiply on these cores: the hardware ceiling we compare to."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t) / 1e9)
    return best


def bench_recipe(args: argparse.Namespace):
    """The step's recipe with --batch-size / --lr applied (the same overrides as `tinymnist train`)."""
    return get_step(args.step).recipe.with_overrides(batch_size=args.batch_size, lr=args.lr)


def overridden(r: dict) -> str:
    changes = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r.get("overrides", {}).items())
    return f"; the variant `{changes}`" if changes else ""


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(args: argparse.Namespace) -> dict:
    data = load_mnist(args.data_dir, allow_download=False)
    recipe = bench_recipe(args)
    torch.set_num_threads(args.threads)
    train_flops, eval_flops = flops_per_image(recipe.model)
    n_train, n_test = len(data.train_labels), len(data.held_out_labels)
    result = {
        "step": args.step,
        "overrides": {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None},
        "model": recipe.model, "params": count_params(create_model(recipe.model)),
        "batch_size": recipe.batch_size, "epochs": recipe.epochs, "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "cpu": _cpu_name(), "platform": platform.platform(),
        "command": "python " + " ".join(sys.argv), "repeats": args.repeats,
        "train_flops_per_image": train_flops, "eval_flops_per_image": eval_flops,
        "epoch_flops": train_flops * n_train + eval_flops * n_test,
        "peak_gflops": peak_gflops(), "configs": {},
    }
    runs: dict[str, dict[str, list[float]]] = {"baseline": {"train": [], "eval": []}}
    configs = {p: (recipe, Options(device=args.device, precision=p, threads=args.threads)) for p in args.precisions}
    if args.ema:  # the same configurations with weight averaging on, interleaved with them
        configs.update({f"{p}, EMA {args.ema:g}": (dataclasses.replace(r, ema=args.ema), options)
                        for p, (r, options) in list(configs.items())})
    for p in configs:
        runs[p] = {"train": [], "eval": []}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every configuration alike
        tr, ev = baseline_epoch(recipe.model, data, recipe.batch_size, recipe.lr)
        runs["baseline"]["train"].append(tr)
        runs["baseline"]["eval"].append(ev)
        for p, (r, options) in configs.items():
            m = execute(RunSpec(dataclasses.replace(r, epochs=1, cycle_epochs=None), options), data).history[0]
            runs[p]["train"].append(m["train_seconds"])
            runs[p]["eval"].append(m["eval_seconds"])
    base_epoch = median(runs["baseline"]["train"]) + median(runs["baseline"]["eval"])
    for name, r in runs.items():
        train_s, eval_s = median(r["train"]), median(r["eval"])
        result["configs"][name] = {
            "train_seconds": train_s, "eval_seconds": eval_s, "epoch_seconds": train_s + eval_s,
            "train_images_per_s": n_train / train_s, "train_gflops": train_flops * n_train / train_s / 1e9,
            "speedup_vs_baseline": base_epoch / (train_s + eval_s), "samples": r,
        }
    if args.full:
        for p, (r, options) in configs.items():
            walls, accs = [], []
            for _ in range(args.full):
                start = time.perf_counter()
                history = execute(RunSpec(r, options), data).history
                walls.append(time.perf_counter() - start)
                accs.append([m["test_acc"] for m in history])
            result["configs"][p]["full_wall_seconds"] = median(walls)
            result["configs"][p]["full_wall_samples"] = walls
            result["configs"][p]["full_test_accs"] = accs
        result["baseline_full_wall_estimate"] = base_epoch * recipe.epochs
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure_parallel(args: argparse.Namespace) -> dict:
    """Wall time of ``--parallel`` seeds of ``--epochs-parallel`` epochs each, trained as `tinymnist consistency`
    does: one at a time with every core's thread, then --jobs 2, 3, ... up to the cores, one thread per job
    (repeated --repeats times, interleaved; medians)."""
    import tempfile

    data = load_mnist(args.data_dir, allow_download=False)
    recipe = dataclasses.replace(bench_recipe(args), epochs=args.epochs_parallel, cycle_epochs=None)
    seeds = list(range(1, args.parallel + 1))
    cores = args.threads
    settings = [(1, cores)] + [(jobs, max(1, cores // jobs)) for jobs in range(2, cores + 1)]
    walls: dict[str, list[float]] = {f"{jobs} x {threads} thread{'s' * (threads > 1)}": []
                                     for jobs, threads in settings}
    for _ in range(args.repeats):
        for (jobs, threads), key in zip(settings, walls, strict=True):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                run_seeds(RunSpec(recipe, Options(device=args.device, threads=threads), args.step), seeds, Path(out),
                          data, last_k=1, jobs=jobs)
                walls[key].append(time.perf_counter() - start)
    base = median(next(iter(walls.values())))
    return {"kind": "parallel", "step": args.step, "seeds": len(seeds), "epochs": args.epochs_parallel,
            "device": args.device, "threads": cores, "torch": torch.__version__, "cpu": _cpu_name(),
            "command": "python " + " ".join(sys.argv), "repeats": args.repeats,
            "settings": {k: {"wall_seconds": median(v), "samples": v, "throughput_vs_one_job": base / median(v),
                             "seed_epochs_per_minute": 60 * len(seeds) * args.epochs_parallel / median(v)}
                         for k, v in walls.items()}}


def render_parallel(r: dict) -> list[str]:
    lines = [f"## Seeds at once: {r['seeds']} seeds of {r['step']}, {r['epochs']} epochs each, on {r['device']}", "",
             f"- machine: {r['cpu']}, torch {r['torch']}", f"- command: `{r['command']}`", "",
             "How `tinymnist consistency --jobs N` uses the cores: N processes, one seed each, cores/N threads each.",
             "", "| jobs x threads | wall (median) | seed-epochs per minute | throughput vs one job |",
             "|---|---|---|---|"]
    for name, c in r["settings"].items():
        lines.append(f"| {name} | {c['wall_seconds']:.0f} s ({', '.join(f'{w:.0f}' for w in c['samples'])}) | "
                     f"{c['seed_epochs_per_minute']:.1f} | {c['throughput_vs_one_job']:.2f}x |")
    return [*lines, ""]


def measure_profile(args: argparse.Namespace, steps: int = 200) -> dict:
    """Where a training step's time goes: torch.profiler's self time per operator over ``steps`` steps of the
    real pipeline (after one warm-up epoch on the same images), as ms per step and share of the total."""
    from torch.profiler import ProfilerActivity, profile

    recipe = bench_recipe(args)
    data = load_mnist(args.data_dir, allow_download=False).subset(steps * recipe.batch_size, 500)
    result = {"kind": "profile", "step": args.step, "model": recipe.model, "batch_size": recipe.batch_size,
              "device": args.device, "threads": args.threads, "torch": torch.__version__, "cpu": _cpu_name(),
              "command": "python " + " ".join(sys.argv), "steps": steps, "precisions": {}}
    class SecondEpochProfile(Sink):
        """torch.profiler over the training batches of epoch 2 (epoch 1 warms up; evaluation is left out)."""

        def epoch(self, trainer, metrics: dict) -> None:
            if trainer.epoch == 1:
                self.prof = profile(activities=[ProfilerActivity.CPU]).__enter__()

        def batch(self, done: int, total: int) -> None:
            if getattr(self, "prof", None) and done == total:
                self.prof.__exit__(None, None, None)

    for precision in args.precisions:
        spec = RunSpec(dataclasses.replace(recipe, epochs=2, cycle_epochs=None),
                       Options(device=args.device, precision=precision, threads=args.threads))
        profiled = SecondEpochProfile()
        execute(spec, data, [profiled])
        prof = profiled.prof
        ops = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
        total = sum(t for _, t, _ in ops)
        top = sorted(ops, key=lambda o: -o[1])[:args.profile_top]
        result["precisions"][precision] = {
            "ms_per_step": total / 1000 / steps,
            "ops": [{"op": k, "ms_per_step": t / 1000 / steps, "share": t / total, "calls_per_step": n / steps}
                    for k, t, n in top]}
    return result


def render_profile(r: dict) -> list[str]:
    lines = [f"## Where a training step goes: {r['step']} ({r['model']}, batch {r['batch_size']}) on {r['device']}",
             "", f"- machine: {r['cpu']}, {r['threads']} threads, torch {r['torch']}", f"- command: `{r['command']}`",
             f"- torch.profiler self CPU time per operator over {r['steps']} training steps (profiler overhead "
             "included, so the total is above the benchmark's per-step time)", ""]
    for precision, p in r["precisions"].items():
        lines += [f"{precision}: {p['ms_per_step']:.2f} ms per step in all", "",
                  "| operator | ms per step | share | calls per step |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['ms_per_step']:.3f} | {100 * o['share']:.1f}% | {o['calls_per_step']:.0f} |"
                  for o in p["ops"]]
        lines.append("")
    return lines


def _cpu_name() -> str:
    return f"{cpu_name()} ({os.cpu_count()} cores)"


# The project's speed targets: full-recipe wall seconds on 2 CPU cores, and the speed-up over the baseline.
EPOCH = 60_000  # MNIST's training images: an epoch
TARGETS = {"original_step4": {"wall": 120, "ratio": 2.5}, "compact_step4": {"wall": 90}}


def verdicts(r: dict) -> list[str]:
    # the targets are for the steps as defined, not for variants
    target, lines = ({} if r.get("overrides") else TARGETS.get(r["step"], {})), []
    for name, c in r["configs"].items():
        if name == "baseline":
            continue
        if "wall" in target and "full_wall_seconds" in c:
            met = c["full_wall_seconds"] <= target["wall"]
            lines.append(f"- {name}: full recipe <= {target['wall']} s: **{'met' if met else 'missed'}** "
                         f"({c['full_wall_seconds']:.0f} s)")
        if "ratio" in target:
            met = c["speedup_vs_baseline"] >= target["ratio"]
            lines.append(f"- {name}: >= {target['ratio']}x the baseline: **{'met' if met else 'missed'}** "
                         f"({c['speedup_vs_baseline']:.2f}x)")
    for name, c in r["configs"].items():  # weight averaging's cost: a training epoch with it against without
        plain = r["configs"].get(name.split(", EMA")[0])
        if ", EMA" in name and plain:
            extra = c["train_seconds"] / plain["train_seconds"] - 1
            each = ", ".join(f"{100 * (a / b - 1):+.1f}%"
                             for a, b in zip(c["samples"]["train"], plain["samples"]["train"], strict=True))
            lines.append(f"- {name}: a training epoch within 5% of {name.split(',')[0]} without weight averaging: "
                         f"**{'met' if extra <= 0.05 else 'missed'}** ({100 * extra:+.1f}%, medians; per interleaved "
                         f"repeat {each})")
    return lines


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


def render_floor(r: dict) -> list[str]:
    """bench_floor.py's JSON: the convolutions alone against the whole step, and what they leave reachable."""
    epochs, steps, g = r["epochs"], r["steps_per_epoch"], r["glibc_defaults"]
    run = lambda ms: ms * steps * epochs / 1e3  # noqa: E731 - seconds of `epochs` epochs' training steps
    lines = [f"## The convolutions alone: a lower bound on a training step, {r['threads']} threads, fp32", "",
             f"- machine: {r['cpu']}, {r['cpu_capability']} kernels, {r['threads']} threads, torch {r['torch']}",
             f"- command: `{r['command']}` (bench/bench_floor.py)",
             f"- per step of compact_step4's batch, medians over {r['repeats']} interleaved repeats of {r['steps']} "
             "steps: every convolution of the model alone, forward and backward, on the shapes it trains on, each "
             "in the faster of channels_last and NCHW (what a step costs if BatchNorm, ReLU, pooling, the loss, "
             "autograd and the optimizer cost nothing); the whole step on a resident batch, uncompiled and "
             "through torch.compile (channels_last, no data pipeline); 15 epochs are "
             f"{steps} steps x {epochs} of them. Tutorial: one epoch of the per-image DataLoader pipeline "
             f"({r['images']:,} training images scaled to 60,000, plus evaluation), timed in the same repeats",
             f"- peak fp32 matmul on these cores: {r['peak_gflops']:.0f} GFLOP/s; page faults per timed step: "
             f"{max(row['faults_per_step'] for row in r['rows']):.0f} at most, with glibc's thresholds set as the "
             f"engine's data tensors set them; `{g['model']}`'s step first timed with a fresh process's thresholds: "
             f"{g['step_ms']:.2f} ms, {g['faults_per_step']:,.0f} page faults a step", "",
             "| model | convolutions, channels_last | convolutions, NCHW | convolutions, best | step | step, compiled "
             f"| convolutions' share of the compiled step | {epochs} epochs: FLOP floor | {epochs} epochs: "
             f"convolutions alone | {epochs} epochs: compiled steps | tutorial epoch | tutorial epoch over the "
             "convolutions' epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def bounds(row: dict) -> tuple[float, float, float]:
        """(FLOP floor over `epochs` epochs in seconds, the tutorial's epoch over the convolutions' epoch, the
        milliseconds a step 2x the tutorial leaves outside the convolutions)"""
        conv, tutorial = row["conv_best_ms"], row["tutorial_epoch_seconds"]
        flop_floor = row["train_flops_per_image"] * EPOCH * epochs / (r["peak_gflops"] * 1e9)
        return flop_floor, tutorial / (conv * steps / 1e3), max(0.0, tutorial / 2 * 1e3 / steps - conv)

    for row in r["rows"]:
        conv, (flop_floor, ceiling, _) = row["conv_best_ms"], bounds(row)
        lines.append(f"| `{row['model']}` ({row['params']:,}) | {row['conv_ms']['channels_last']:.2f} ms | "
                     f"{row['conv_ms']['nchw']:.2f} ms | {conv:.2f} ms | {row['step_ms']:.2f} ms | "
                     f"{row['step_compiled_ms']:.2f} ms | {conv / row['step_compiled_ms']:.0%} | {flop_floor:.0f} s | "
                     f"{run(conv):.0f} s | {run(row['step_compiled_ms']):.0f} s | "
                     f"{row['tutorial_epoch_seconds']:.1f} s | {ceiling:.2f}x |")
    target = next((row for row in r["rows"] if row["model"] == "compact_7k4"), None)
    if target:
        conv, (flop_floor, ceiling, left) = target["conv_best_ms"], bounds(target)
        lines += ["", f"- compact_step4's full recipe <= 45 s on these cores: **out of reach** with these convolution "
                  f"kernels (oneDNN's, in either layout): the convolutions alone take {run(conv):.0f} s of training "
                  f"steps over {epochs} epochs, before anything else; under the FLOP floor's {flop_floor:.0f} s, "
                  f"45 s would need every FLOP at {flop_floor / 45:.0%} or more of the matmul peak and nothing else "
                  "to cost anything",
                  f"- >= 2x the tutorial pipeline: an engine keeping these convolutions gains at most "
                  f"{ceiling:.2f}x per epoch, with every other operation free; 2x leaves the rest of the step "
                  f"{left:.2f} ms, against the compiled step's "
                  f"{target['step_compiled_ms'] - conv:.2f} ms outside the convolutions (and start-up on top)"]
    return [*lines, ""]


def render_grad_error(r: dict) -> list[str]:
    """bench_grad_error.py's JSON: one step's gradients against float64, per way of computing them."""
    lines = ["## Gradient error: one training step against exact arithmetic", "",
             f"- machine: {r['cpu']}, {r['threads']} thread{'s' * (r['threads'] > 1)}, torch {r['torch']}",
             f"- command: `{r['command']}` (bench/bench_grad_error.py)",
             f"- the loss's gradients for one batch of {r['batch']} MNIST training images at each model's initial "
             f"weights (seed 0), fp32, against the same step in float64; a parameter's error is its largest "
             f"deviation over its largest gradient, and a row gives the largest and the median over the model's "
             f"parameters", "",
             "| model | step | largest error | median error |", "|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| `{row['model']}` ({row['params']:,}) | {row['way']} | {row['max_error']:.1e} | "
                     f"{row['median_error']:.1e} |")
    return [*lines, ""]


def render_stacked(r: dict) -> list[str]:
    """bench_stacked.py's JSON: seed-epochs a minute, one plain model per process against seeds stacked."""
    lines = ["## Seeds at once, stacked: one model per process against several seeds in one model", "",
             f"- machine: {r['machine']}, torch {r['torch']}", f"- command: `{r['command']}` (bench/bench_stacked.py)",
             f"- per process, a timed training epoch of {r['steps']} batches of {r['batch']} images per seed after "
             f"one as a warm-up (compact_step4's recipe, augmentation included, fp32; no evaluation), the processes "
             f"started together; medians over {r['repeats']} interleaved repeats. One seed: the Trainer; several: "
             f"tinymnist.training.stacked.StackedTrainer (every convolution grouped by seed)", "",
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


def render_serve(r: dict) -> list[str]:
    drift = r["rss_max_drift_mb"]
    return ["## Serving: `tinymnist serve` under load on loopback", "",
            f"- machine: {r['cpu']}; the server and the {r['clients']} client threads share its cores",
            f"- command: `{r['command']}` (bench/bench_serve.py)",
            f"- run served: `{r['run']}`", "",
            "| requests | concurrent clients | errors | requests/s | p50 latency | p99 latency | RSS after warm-up "
            "| largest RSS change, requests 1,000-2,000 |", "|---|---|---|---|---|---|---|---|",
            f"| {r['requests']:,} (after {r['warmup']} warm-up) | {r['clients']} | {r['errors']} | "
            f"{r['requests_per_second']:.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
            f"{r['rss_after_warmup_mb']:.0f} MB | {drift:.1f} MB |", "",
            f"- no errors: **{'met' if r['errors'] == 0 else 'missed'}**; RSS within 20 MB of its value after the "
            f"warm-up: **{'met' if drift <= 20 else 'missed'}** ({drift:.1f} MB)", ""]


def save_json(result: dict, path: str | None) -> None:
    """A benchmark's result as indented JSON at ``path`` (its folder made), when a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def render(results: list[dict]) -> str:
    """docs/performance.md from benchmark JSON files."""
    lines = ["# Performance", "",
             "Generated by `python bench/bench_train.py --doc docs/performance.md bench/results/*.json` from the",
             "benchmark's JSON files; every figure below comes from them. Per-epoch seconds are medians over the",
             "repeats, each configuration interleaved with the baseline in the same run; the full-recipe wall time",
             "includes building the model and every evaluation. The baseline is the tutorial way of feeding MNIST:",
             "a `Dataset` whose `__getitem__` turns one uint8 image into a normalized float tensor, through a",
             "`DataLoader` (batch as the recipe, shuffled, no workers), the same model in fp32 and NCHW, plain SGD,",
             "no augmentation, evaluation in batches of the same size. It skips the PIL round trip of",
             "torchvision's MNIST, so it is a fast baseline and the ratios are conservative.", "",
             "GPU: not timed; no GPU was available to this work. The GPU path (data, shuffling and augmentation on",
             "the device, bf16 autocast) runs the same code as the CPU path, which the tests exercise; several seeds",
             "at once on one GPU is `tinymnist consistency STEP --jobs N` (N processes sharing the device), tested on",
             "the CPU only. The GPU targets (15 epochs in 3 s, 5 seeds in not much more, and 15 epochs of",
             "compact_step4 and 20 seeds at once on a lent GPU) are therefore unmeasured; so is `--compile` on a GPU",
             "(`auto` leaves it off there).",
             "",
             "Search throughput (trials per worker-hour, given per study in docs/search.md) is what it was before",
             "`--compile`: the committed studies ran `--workers 2` on two cores, one thread a worker, where `auto`",
             "leaves the step uncompiled. The one-thread speed matrix below shows what compiling gives there, on the",
             "study's kind of models. A search with one worker on two cores trains two threads, where `auto`",
             "compiles trials of ten epochs' worth of images or more (each trial's model compiled afresh); a study's",
             "export records `compiled` per trial.",
             "",
             "Accuracy is not judged here from one seed: a table's last-5 column is one run. Precision, weight",
             "averaging and the compiled step are compared over fresh seeds, paired seed by seed, in docs/results.md",
             "(\"Paired comparisons\": the mean difference in the lowest last-5 test accuracy with its 95% interval);",
             "the choice of `--precision auto` (fp32) follows from that table, as docs/findings.md's "
             "\"Precision\" says.",
             ""]
    order = {None: 0, "matrix": 1, "floor": 2, "grad_error": 3, "profile": 4, "parallel": 5, "stacked": 6, "serve": 7}
    renderers = {"parallel": render_parallel, "profile": render_profile, "serve": render_serve,
                 "matrix": render_matrix, "floor": render_floor, "stacked": render_stacked,
                 "grad_error": render_grad_error}
    for r in sorted(results, key=lambda r: (order[r.get("kind")], bool(r.get("overrides")),
                                            -r["threads"] if r.get("kind") == "matrix" else 0)):
        if r.get("kind") in renderers:
            lines += renderers[r["kind"]](r)
            continue
        cfgs = r["configs"]
        floor = r["epoch_flops"] / (r["peak_gflops"] * 1e9)
        title = f"{r['step']} ({r['params']:,} params, batch {r['batch_size']}{overridden(r)})"
        lines += [f"## {title} on {r['device']}", "",
                  f"- machine: {r['cpu']}, {r['threads']} threads, torch {r['torch']}",
                  f"- command: `{r['command']}`",
                  f"- FLOPs per image: {r['train_flops_per_image'] / 1e6:.2f} M training (forward + backward), "
                  f"{r['eval_flops_per_image'] / 1e6:.2f} M inference; {r['epoch_flops'] / 1e9:.0f} GFLOP per epoch",
                  f"- peak fp32 matmul on these cores: {r['peak_gflops']:.0f} GFLOP/s, so the FLOP floor is "
                  f"**{floor:.2f} s per epoch** ({floor * r['epochs']:.1f} s for {r['epochs']} epochs)",
                  f"- peak memory (RSS): {r['peak_rss_mb']:.0f} MB", "",
                  "| pipeline | train s/epoch | eval s/epoch | images/s | GFLOP/s | x floor | speed-up vs baseline "
                  f"| full recipe wall ({r['epochs']} epochs) | last-5 test acc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, c in cfgs.items():
            label = "baseline: per-image Dataset + DataLoader, fp32, NCHW" if name == "baseline" else \
                f"tinymnist, {name}, channels_last"
            if "full_wall_seconds" in c:
                full = f"{c['full_wall_seconds']:.0f} s (runs: {', '.join(f'{w:.0f}' for w in c['full_wall_samples'])})"
                tails = "; ".join(" ".join(f"{a:.2f}" for a in accs[-5:]) for accs in c["full_test_accs"])
            elif name == "baseline" and "baseline_full_wall_estimate" in r:
                full, tails = f"~{r['baseline_full_wall_estimate']:.0f} s (epochs x {r['epochs']})", ""
            else:
                full, tails = "", ""
            lines.append(f"| {label} | {c['train_seconds']:.2f} | {c['eval_seconds']:.2f} | "
                         f"{c['train_images_per_s']:,.0f} | {c['train_gflops']:.1f} | "
                         f"{c['epoch_seconds'] / floor:.1f} | {c['speedup_vs_baseline']:.2f}x | {full} | {tails} |")
        lines += ["", *verdicts(r), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", default="original_step4")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=float, help="override the recipe's (peak) learning rate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="one-epoch measurements per configuration")
    parser.add_argument("--ema", type=float, help="also time each configuration with weight averaging at this decay")
    parser.add_argument("--full", type=int, default=0, help="also time the full recipe this many times")
    parser.add_argument("--parallel", type=int, default=0,
                        help="instead: time this many seeds trained one at a time and N at a time")
    parser.add_argument("--epochs-parallel", type=int, default=2, help="epochs per seed with --parallel")
    parser.add_argument("--profile", action="store_true", help="instead: profile training steps per operator")
    parser.add_argument("--profile-top", type=int, default=12, help="operators listed with --profile")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--doc", help="render these JSON files (positional) into this markdown file and exit")
    parser.add_argument("inputs", nargs="*")
    args = parser.parse_args()
    if args.doc:
        results = [json.loads(Path(p).read_text()) for p in sorted(args.inputs)]
        Path(args.doc).write_text(render(results))
        return 0
    result = measure_profile(args) if args.profile else measure_parallel(args) if args.parallel else measure(args)
    save_json(result, args.json)
    print(render([result]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
