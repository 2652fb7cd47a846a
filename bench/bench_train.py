"""Training-speed benchmark: tinymnist's pipeline against a conventional per-image DataLoader baseline.

    python bench/bench_train.py --step original_step4 --json bench/results/cpu-original_step4.json
    python bench/bench_train.py --step compact_step4 --parallel 4 --json bench/results/cpu-parallel-compact_step4.json
    python bench/bench_train.py --step compact_step4 --profile --json bench/results/cpu-profile-compact_step4.json
    python bench/performance_doc.py docs/performance.md bench/results/*.json   # regenerate the doc

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
            spec = RunSpec(recipe=dataclasses.replace(r, epochs=1, cycle_epochs=None), options=options)
            m = execute(spec, data).history[0]
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
                history = execute(RunSpec(recipe=r, options=options), data).history
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
                spec = RunSpec(recipe=recipe, options=Options(device=args.device, threads=threads), step=args.step)
                run_seeds(spec, seeds, Path(out), data, last_k=1, jobs=jobs)
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
        spec = RunSpec(recipe=dataclasses.replace(recipe, epochs=2, cycle_epochs=None),
                       options=Options(device=args.device, precision=precision, threads=args.threads))
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


def save_json(result: dict, path: str | None) -> None:
    """A benchmark's result as indented JSON at ``path`` (its folder made), when a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def render_train(r: dict) -> list[str]:
    """A full-recipe benchmark's section: per-epoch seconds of each pipeline against the baseline."""
    lines: list[str] = []
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
    return lines


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
    args = parser.parse_args()
    result = measure_profile(args) if args.profile else measure_parallel(args) if args.parallel else measure(args)
    save_json(result, args.json)
    from performance_doc import render

    print(render([result]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
