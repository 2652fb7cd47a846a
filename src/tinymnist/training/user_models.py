"""What training promises a model the project did not write (a user's file, a notebook's class): the plain
contiguous NCHW input plain PyTorch gives it unless a probe proves channels_last changes nothing, and a failure
inside its forward told in one sentence naming its own file and line."""

from __future__ import annotations

import copy
import inspect
import os
import traceback
from pathlib import Path

import torch
from torch import nn

from tinymnist.errors import UsageError
from tinymnist.models import is_user_model, split_user_model

PROBE_IMAGES = 8  # a batch small enough to cost nothing, large enough for a batch-shaped bug to show


class ModelError(UsageError):
    """A user's model failed inside its own code (its forward, its layers' shapes); the sentence names the line."""


def model_file(name: str, source: Path | None, model: nn.Module, built: bool = False) -> tuple[str, str] | None:
    """Where a model the project did not write comes from, as (the file its code runs from, the path to name in
    an error): for ``FILE.py:NAME`` the user's file (or ``source``, a run's kept copy; a file of the same bytes
    loaded earlier in this process is where the code runs from), for a model ``built`` by a caller's own function
    its class's file. None for a built-in model, or when Python cannot say (a class typed at a prompt)."""
    try:
        path = inspect.getsourcefile(type(model))
    except (TypeError, OSError):
        path = None
    code = os.path.realpath(path) if path else None
    if code and code.startswith(os.path.realpath(os.path.dirname(torch.__file__))):
        code = None  # a torch container a factory returned: no line of it is the user's
    if built:
        return (code, code) if code else None
    if not is_user_model(name):
        return None
    shown = str(source or split_user_model(name)[0])
    return (code or os.path.realpath(shown), shown)


def safe_memory_format(model: nn.Module, wanted: torch.memory_format, probe: torch.Tensor) -> torch.memory_format:
    """``wanted`` when it is channels_last and ``model`` gives the same outputs on ``probe`` (a normalized NCHW
    batch) in both layouts, in eval mode; else the contiguous NCHW format plain PyTorch uses. The probe runs on
    a copy and leaves the random generators as they were, so it changes nothing that is trained."""
    if wanted != torch.channels_last:
        return wanted
    devices = [probe.device] if probe.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            twin = copy.deepcopy(model).eval()
            plain = twin(probe.contiguous())
            twin = twin.to(memory_format=wanted)
            fast = twin(probe.contiguous(memory_format=wanted))
    except Exception:  # whatever a user's forward raises in either layout, NCHW is what it was written for
        return torch.contiguous_format
    if not isinstance(plain, torch.Tensor) or not isinstance(fast, torch.Tensor) or plain.shape != fast.shape:
        return torch.contiguous_format
    same = torch.allclose(plain.float(), fast.float(), rtol=1e-4, atol=1e-5, equal_nan=True)
    return wanted if same else torch.contiguous_format


def model_failure(error: Exception, file: tuple[str, str], where: str) -> ModelError | None:
    """The one sentence for ``error`` raised inside a model's file (``file``: as model_file gives it; ``where``:
    when, e.g. "at epoch 2, batch 1 of training"), naming the innermost line of that file it passed through;
    None when it never did."""
    code, shown = file
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.realpath(f.filename) == code]
    if not frames:
        return None
    frame = frames[-1]
    reason = (str(error).strip().splitlines() or [""])[0][:300]
    what = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return ModelError(f"{shown}:{frame.lineno}: the model's forward raised {what} {where} "
                      f"(in `{(frame.line or '').strip()}`); fix that line of the model and train again.")
