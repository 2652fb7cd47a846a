"""What the convolutions alone cost: a lower bound on a training step that no fusion of the other operations
can beat.

    python bench/bench_floor.py --json bench/results/cpu-floor.json       # ~3 min on 2 cores
    python bench/bench_floor.py --models compact_7k4 --steps 50 --repeats 1  # a quick look

For each model, at compact_step4's batch size, fp32, in one process, interleaved over ``--repeats``:
- convolutions: every Conv2d of the model run alone on the shapes it sees in training, forward and backward
  (the gradient of its weights, and of its input wherever the layer below has weights), through the same ATen
  calls autograd makes, in channels_last and in NCHW; each layer counted in its faster layout. This is what a
  step costs if BatchNorm, ReLU, pooling, the loss, autograd and the optimizer cost nothing;
- step: the whole training step on a resident batch (forward, loss, backward, the recipe's optimizer), no data
  pipeline, channels_last, as the engine runs it uncompiled; "step, compiled" the same through torch.compile,
  which fuses the elementwise operations around the convolutions;
- tutorial: bench_train.py's per-image Dataset + DataLoader epoch (NCHW, plain SGD), ``--images`` training
  images scaled to 60,000, plus evaluating the test images.
Milliseconds per step are medians; 15 epochs are ``steps per epoch x 15`` of them (training steps only: no
augmentation, evaluation or start-up, which a real run adds). The tutorial's epoch over the convolutions'
share of one is the most any engine keeping these convolutions could gain on it per epoch.
glibc hands freed blocks of a few MB back to the kernel and faults them in again a page at a time unless a
larger block has been freed before; the engine's data tensors are, so its steps run without page faults, and
this benchmark sets glibc's thresholds (mallopt) to time its bare steps the same way, after timing the first
model's step once as a fresh process would run it; page faults per step are recorded. Writes JSON;
``python bench/performance_doc.py ...`` renders it into docs/performance.md.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch import nn

from bench_matrix import MODELS
from bench_train import EPOCH, baseline_epoch, flops_per_image, peak_gflops, save_json
from tinymnist.data import load_mnist
from tinymnist.machine import cpu_name
from tinymnist.models import count_params, create_model
from tinymnist.steps.builtin import get_step
from tinymnist.training.engine import batch_loss, make_optimizer

LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def conv_calls(model: nn.Module, batch: int, layout: torch.memory_format) -> list:
    """One closure per Conv2d: its forward and backward on the input it sees in a training forward pass."""
    seen: list[tuple[nn.Conv2d, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach())))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.train()
    model(torch.randn(batch, 1, 28, 28).contiguous(memory_format=layout))
    for h in hooks:
        h.remove()
    calls = []
    for i, (conv, x) in enumerate(seen):
        w = conv.weight.detach().contiguous(memory_format=layout)
        b = None if conv.bias is None else conv.bias.detach()
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        grad_out = torch.randn_like(nn.functional.conv2d(x, w, b, *args)).contiguous(memory_format=layout)
        mask = [i > 0, True, b is not None]  # the first layer's input (the images) needs no gradient

        def call(conv=conv, x=x, w=w, b=b, args=args, grad_out=grad_out, mask=mask) -> None:
            nn.functional.conv2d(x, w, b, *args)
            torch.ops.aten.convolution_backward(grad_out, x, w, None if b is None else list(b.shape), conv.stride,
                                                conv.padding, conv.dilation, False, [0, 0], conv.groups, mask)
        calls.append(call)
    return calls


def keep_freed_memory() -> None:
    """glibc's mmap threshold at its largest (32 MB) and a trim threshold of 1 GB: what a freed 32 MB block does
    to glibc's own (dynamic) thresholds, and the engine's data tensors do."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def per_call_ms(fn, steps: int) -> tuple[float, float]:
    """(milliseconds, page faults) per call of ``fn``, after a few calls to warm up."""
    for _ in range(max(3, steps // 10)):
        fn()
    start, faulted = time.perf_counter(), faults()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3, (faults() - faulted) / steps


def training_step(model_name: str, batch: int, compiled: bool):
    """The engine's uncompiled (or compiled) training step on one resident batch."""
    recipe = get_step("compact_step4").recipe
    torch.manual_seed(0)
    model = create_model(model_name).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(recipe, model)
    forward = model
    if compiled:
        torch.compiler.reset()
        forward = torch.compile(model, dynamic=False)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    model.train()

    def step() -> None:
        loss = batch_loss(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    recipe = get_step("compact_step4").recipe
    batch = recipe.batch_size
    # the first model's bare step once with glibc's thresholds as a fresh process has them (no going back after)
    glibc = per_call_ms(training_step(args.models[0], batch, False), args.steps)
    keep_freed_memory()
    steps_per_epoch = -(-EPOCH // batch)
    data = load_mnist(args.data_dir, allow_download=False).subset(args.images)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name)
        layers = {lay: conv_calls(model.to(memory_format=fmt), batch, fmt) for lay, fmt in LAYOUTS.items()}
        step, compiled = training_step(name, batch, False), training_step(name, batch, True)
        compiled()  # the compiler's warm-up, outside the timing
        samples: dict[str, list] = {"layers": [], "step": [], "step_compiled": [], "faults": [], "tutorial": []}
        for _ in range(args.repeats):
            samples["layers"].append({lay: [per_call_ms(c, args.steps)[0] for c in calls]
                                      for lay, calls in layers.items()})
            for key, fn in (("step", step), ("step_compiled", compiled)):
                ms, faulted = per_call_ms(fn, args.steps)
                samples[key].append(ms)
                samples["faults"].append(faulted)
            train, evaluation = baseline_epoch(name, data, batch, recipe.lr)
            samples["tutorial"].append(train * EPOCH / len(data.train_labels) + evaluation)
        per_layer = {lay: [statistics.median(s[lay][i] for s in samples["layers"]) for i in range(len(calls))]
                     for lay, calls in layers.items()}
        rows.append({"model": name, "params": count_params(model), "batch_size": batch,
                     "train_flops_per_image": flops_per_image(name)[0],
                     "conv_ms": {lay: sum(ms) for lay, ms in per_layer.items()},
                     "conv_best_ms": sum(min(ms) for ms in zip(*per_layer.values(), strict=True)),
                     "conv_layer_ms": per_layer,
                     "step_ms": statistics.median(samples["step"]),
                     "step_compiled_ms": statistics.median(samples["step_compiled"]),
                     "faults_per_step": max(samples["faults"]),
                     "tutorial_epoch_seconds": statistics.median(samples["tutorial"]), "samples": samples})
        print(f"{name}: convolutions {rows[-1]['conv_best_ms']:.2f} ms, step {rows[-1]['step_ms']:.2f} ms, "
              f"compiled {rows[-1]['step_compiled_ms']:.2f} ms, tutorial epoch "
              f"{rows[-1]['tutorial_epoch_seconds']:.1f} s", flush=True)
    return {"kind": "floor", "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "platform": platform.platform(), "command": "python " + " ".join(sys.argv), "repeats": args.repeats,
            "steps": args.steps, "images": args.images,
            "glibc_defaults": {"model": args.models[0], "step_ms": glibc[0], "faults_per_step": glibc[1]},
            "steps_per_epoch": steps_per_epoch, "epochs": recipe.epochs,
            "peak_gflops": peak_gflops(), "rows": rows}



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

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=200, help="steps (or calls) per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000, help="training images of the tutorial's timed epoch")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    save_json(measure(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
