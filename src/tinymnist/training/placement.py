"""Where and how a training runs, decided once: the device and its threads, the memory format, the precision
and whether the training step is compiled (the policy the engine and the run records share)."""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager

import torch

from tinymnist.errors import UsageError
from tinymnist.machine import pick_device
from tinymnist.training.recipes import Options

# `--compile auto` compiles a CPU training of at least this many images (epochs x training images) on two or more
# threads: ten epochs of MNIST, about what it takes for a step's saving to pay back the compiler's warm-up with an
# empty cache on 2 cores (docs/performance.md, the speed matrices; docs/speed.md has the full-recipe pairs).
COMPILE_MIN_IMAGES = 600_000


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp32 on every device. bf16 is asked for by name: paired over fresh seeds it was not shown to
    cost accuracy, nor shown not to (docs/findings.md, "Precision"), and it saves about a tenth of an epoch on the CPUs
    measured, against a target that seeds miss by hundredths of a point."""
    if precision == "auto":
        return "fp32"
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32 or bf16.")
    return precision


def placement(options: Options) -> tuple[torch.device, torch.memory_format, str]:
    """Where and how a training runs: its device (with the CPU threads set, when given), memory format and
    resolved precision."""
    device = pick_device(options.device)
    if options.threads and device.type == "cpu":
        torch.set_num_threads(options.threads)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    return device, memory_format, resolve_precision(options.precision, device)


def resolve_options(options: Options, images: int) -> Options:
    """``options`` with its precision and compile setting resolved, as a training of ``images`` images (epochs x
    training images) resolves them in this process: what a run records, so that it resumes as it began."""
    device = pick_device(options.device)
    threads = options.threads or torch.get_num_threads()
    return dataclasses.replace(options, precision=resolve_precision(options.precision, device),
                               compile=resolve_compile(options.compile, device, threads, images))


def resolve_compile(compile: str, device: torch.device, threads: int, images: int) -> str:
    """'auto' -> 'on' for a CPU training of at least COMPILE_MIN_IMAGES images on two or more threads with a C++
    compiler at hand, else 'off'. On two cores the compiled step was faster; on one thread it was no faster; on
    a GPU it is unmeasured (docs/performance.md)."""
    if compile not in ("auto", "on", "off"):
        raise UsageError(f"unknown --compile {compile!r}; use auto, on or off.")
    if compile != "auto":
        return compile
    wanted = device.type == "cpu" and threads >= 2 and images >= COMPILE_MIN_IMAGES
    return "on" if wanted and cpp_compiler() else "off"


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use, or None when there is none."""
    try:
        from torch._inductor import cpp_builder
        return cpp_builder.get_cpp_compiler()
    except Exception:  # any failure to find one means none
        return None


def dynamo_frames() -> tuple[int, int]:
    """(frames torch.compile has tried to compile, frames it compiled) in this process so far: a frame tried and
    not compiled ran eager. A call served by a graph already made adds to neither."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"], counters["frames"]["ok"]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast (convolutions in bf16; BatchNorm, loss and weights in fp32), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
