"""Where and how a training runs, decided once: the device and its threads, the memory format, the precision
and whether the training step is compiled (the policy the engine and the run records share)."""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import AbstractContextManager

import torch
from torch import nn

from tinymnist.errors import Note, UsageError
from tinymnist.machine import pick_device
from tinymnist.training.recipes import Options

COMPILE_MIN_IMAGES = 600_000  # epochs x training images below which `--compile auto` leaves the compiler's warm-up out


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp32 on every device; bf16 is asked for by name (docs/findings.md, "Precision", says why)."""
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
    compiler at hand, else 'off': where the compiled step was measured faster (docs/performance.md)."""
    if compile not in ("auto", "on", "off"):
        raise UsageError(f"unknown --compile {compile!r}; use auto, on or off.")
    if compile != "auto":
        return compile
    wanted = device.type == "cpu" and threads >= 2 and images >= COMPILE_MIN_IMAGES
    return "on" if wanted and cpp_compiler() else "off"


class CompiledForward:
    """A model's training forward pass, through torch.compile when ``mode`` is 'on' for full batches of
    ``batch_size`` (an epoch's last, smaller batch runs uncompiled rather than compiling a second graph). A model
    torch.compile cannot compile (no compiler, an operation it does not support) is noted once and runs
    uncompiled from then on; ``failure`` says why."""

    def __init__(self, model: nn.Module, mode: str, batch_size: int, name: str) -> None:
        self.model, self.mode, self.batch_size, self.name = model, mode, batch_size, name
        self.failure: str | None = None
        self._compiled: nn.Module | None = None
        self._checked = False  # whether the first compiled step has run and been checked
        if mode == "on":
            torch.compiler.reset()  # past dynamo's recompile limit a process's next model would run eager, silently
            self._compiled = torch.compile(model, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Asked for, seen to run compiled (a first full batch has been trained), and not given up."""
        return self.mode == "on" and self._checked and self.failure is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None or x.shape[0] != self.batch_size:
            return self.model(x)
        if self._checked:
            return self._compiled(x)
        before = dynamo_frames()
        try:
            out = self._compiled(x)
        except Exception as e:  # whatever the compiler raises, training goes on without it
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self._give_up(f"{type(e).__name__}: {reason}")
            return self.model(x)
        self._checked = True
        tried, compiled = (after - was for after, was in zip(dynamo_frames(), before, strict=True))
        if tried and not compiled:  # dynamo tried, gave the model up and ran it eager
            self._give_up("torch.compile gave it up and ran it eager; TORCH_LOGS=recompiles says why")
        return out

    def _give_up(self, why: str) -> None:
        self._compiled = None
        self.failure = why
        warnings.warn(Note(f"torch.compile could not compile model {self.name!r} ({why}); training goes on "
                           f"uncompiled."), stacklevel=3)


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
