"""Gradient error: how far one training step's gradients are from exact arithmetic, per way of computing them.

    python bench/bench_grad_error.py --json bench/results/cpu-grad-error.json

For each model: its initial weights (seed 0), one batch of real MNIST training images (normalized, in order),
the loss's gradients computed by the uncompiled step in channels_last (tinymnist's layout) and in NCHW, and by
the compiled step (torch.compile, channels_last), and by the uncompiled channels_last step with every BatchNorm
computed on an NCHW copy (to find where the channels_last step loses digits), all fp32, against the same step
in float64 (NCHW). The error
of a parameter is its largest absolute deviation over its largest absolute gradient; a row gives the largest
and the median over the model's parameters. Single-step numbers: they say which arithmetic is closer to exact,
not what the difference does to accuracy over a run (docs/results.md pairs runs for that).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys

import torch
from torch import nn

from bench_train import save_json
from tinymnist.data import load_mnist
from tinymnist.machine import cpu_name
from tinymnist.models import count_params, create_model

MODELS = ["compact_7k4", "sep_3k8", "tiny:w=8.12.20.20.20,pool=2,sep=2"]
WAYS = {"uncompiled, channels_last": (torch.channels_last, False, False),
        "uncompiled, NCHW": (torch.contiguous_format, False, False),
        "compiled, channels_last": (torch.channels_last, True, False),
        "uncompiled, channels_last, BatchNorm in NCHW": (torch.channels_last, False, True)}


class InNCHW(nn.Module):
    """A layer computed on an NCHW copy of its input, its output handed back in channels_last."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.contiguous()).contiguous(memory_format=torch.channels_last)


def batchnorm_in_nchw(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        setattr(model, name, InNCHW(child)) if isinstance(child, nn.BatchNorm2d) else batchnorm_in_nchw(child)
    return model


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fmt: torch.memory_format,
              compiled: bool, bn_nchw: bool = False) -> list[torch.Tensor]:
    model = copy.deepcopy(model).to(memory_format=fmt).train()
    if bn_nchw:
        model = batchnorm_in_nchw(model)
    forward = torch.compile(model, dynamic=False) if compiled else model
    nn.functional.nll_loss(forward(x.contiguous(memory_format=fmt)), y).backward()
    return [p.grad.double() for p in model.parameters()]


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    data = load_mnist(args.data_dir, allow_download=False)
    x, y = data.normalize(data.train_images[:args.batch]), data.train_labels[:args.batch]
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name)
        exact = gradients(model.double(), x.double(), y, torch.contiguous_format, False)
        model = model.float()
        for way, (fmt, compiled, bn_nchw) in WAYS.items():
            errors = [float((g - e).abs().max() / e.abs().max()) for g, e in
                      zip(gradients(model, x, y, fmt, compiled, bn_nchw), exact, strict=True) if e.abs().max() > 0]
            rows.append({"model": name, "params": count_params(model), "way": way, "max_error": max(errors),
                         "median_error": statistics.median(errors)})
            print(f"{name} {way}: largest {max(errors):.1e}, median {statistics.median(errors):.1e}", flush=True)
    return {"kind": "grad_error", "cpu": f"{cpu_name()} ({os.cpu_count()} cores)", "threads": args.threads,
            "torch": torch.__version__, "platform": platform.platform(), "batch": args.batch,
            "command": "python " + " ".join(sys.argv), "rows": rows}



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

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data-dir", default=os.environ.get("TINYMNIST_DATA"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = measure(args)
    save_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
