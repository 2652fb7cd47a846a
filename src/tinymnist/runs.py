"""Run directories: every file written atomically (temporary file, fsync, rename); no pickle anywhere.

    recipe.json          the recipe, what was overridden, how it was run
    metrics.jsonl        one line appended (and fsynced) as each epoch ends
    weights.safetensors  the model's weights, with the model name in the metadata
    state.safetensors    optimizer and random-generator state at the last completed epoch (for --resume)
    state.json           the history up to that epoch
    summary.json         written when the run ends: figures, verdict, provenance
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from . import __version__
from .data import MNIST
from .engine import Options, Trainer, fit
from .errors import CheckpointError, UsageError
from .models import count_params, create_model
from .recipes import Recipe
from .targets import LAST_K, first_epoch_holding, judge

RECIPE, METRICS, WEIGHTS, STATE, STATE_JSON, SUMMARY = (
    "recipe.json", "metrics.jsonl", "weights.safetensors", "state.safetensors", "state.json", "summary.json")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; is {path.parent} a tinymnist run directory?") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); the run record is corrupt.") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def recipe_from_dict(d: dict) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    try:
        return Recipe(**{k: v for k, v in d.items() if k in known})
    except TypeError as e:
        raise CheckpointError(f"the recorded recipe cannot be read ({e}).") from None


class RunDir:
    """One run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return (self / RECIPE).is_file()

    def finished(self) -> bool:
        return (self / SUMMARY).is_file()

    def create(self, step: str, recipe: Recipe, overrides: dict, run_options: dict) -> None:
        """Start a new run here; refuses a directory that already holds one."""
        if self.exists():
            same = self.recipe() == recipe
            how = (f"resume it with --resume {self.path}" if same and not self.finished()
                   else "choose another --out")
            what = "this same recipe" if same else "a different run"
            raise UsageError(f"{self.path} already holds {what}; {how}.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write the run directory {self.path} ({e.strerror}); "
                             f"choose another --out.") from None
        write_json(self / RECIPE, {"step": step, "recipe": asdict(recipe), "overrides": overrides,
                                   "options": run_options, "tinymnist": __version__})
        write_atomic(self / METRICS, b"")

    def record(self) -> dict:
        return read_json(self / RECIPE)

    def recipe(self) -> Recipe:
        return recipe_from_dict(self.record().get("recipe", {}))

    def append_metrics(self, metrics: dict) -> None:
        with open(self / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
        try:
            lines = (self / METRICS).read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = []
        for i, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:
                    break
                raise CheckpointError(f"{self / METRICS} line {i + 1} is corrupt; the run record is damaged.") from None
        return rows

    def save_checkpoint(self, model_name: str, tensors: dict[str, torch.Tensor], history: list[dict]) -> None:
        """Weights and training state at the end of an epoch; state.json is written last and names the epoch."""
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        write_atomic(self / WEIGHTS, st_save(weights, metadata={"model": model_name, "epoch": str(len(history))}))
        write_atomic(self / STATE, st_save(tensors, metadata={"model": model_name, "epoch": str(len(history))}))
        write_json(self / STATE_JSON, {"epoch": len(history), "history": history})
        # metrics.jsonl follows the checkpoint: one line appended per epoch; rewritten whole from the history
        # when a crash left it torn, behind or ahead.
        raw = (self / METRICS).read_bytes() if (self / METRICS).exists() else b""
        intact = not raw or raw.endswith(b"\n")
        if intact and len(self.metrics()) == len(history) - 1:
            self.append_metrics(history[-1])
        elif not intact or len(self.metrics()) != len(history):
            write_atomic(self / METRICS, "".join(json.dumps(m) + "\n" for m in history).encode())

    def load_checkpoint(self, model_name: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        state = read_json(self / STATE_JSON) if (self / STATE_JSON).exists() else None
        if state is None:
            return {}, []
        tensors = read_safetensors(self / STATE, model_name)
        history = state.get("history", [])
        if len(history) != state.get("epoch"):
            raise CheckpointError(f"{self / STATE_JSON} is inconsistent (epoch {state.get('epoch')}, "
                                  f"{len(history)} history rows); the checkpoint is damaged.")
        return tensors, history

    def write_summary(self, params: int, history: list[dict], device: str, precision: str, wall_seconds: float,
                      normalization: tuple[float, float], last_k: int = LAST_K) -> dict:
        test_accs = [m["test_acc"] for m in history]
        summary = {
            "model": self.recipe().model, "params": params, "epochs": len(history),
            "best_train_acc": max(m["train_acc"] for m in history), "last_train_acc": history[-1]["train_acc"],
            "best_test_acc": max(test_accs), "last_test_acc": test_accs[-1],
            f"min_test_acc_last_{last_k}": min(test_accs[-last_k:]),
            "first_epoch_holding": first_epoch_holding(test_accs),
            "verdict": judge(params, test_accs, last_k).to_dict(),
            "torch": torch.__version__, "device": device, "precision": precision, "platform": platform.platform(),
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "commit": git_commit(), "wall_seconds": wall_seconds,
            "train_seconds": sum(m["train_seconds"] for m in history),
            "normalization": {"mean": normalization[0], "std": normalization[1]},
        }
        write_json(self / SUMMARY, summary)
        return summary

    def summary(self) -> dict:
        return read_json(self / SUMMARY)


def read_safetensors(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file written for ``model_name``; a clear CheckpointError on anything wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; the run has no checkpoint yet.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt.") from None
    if metadata.get("model") != model_name:
        raise CheckpointError(f"{path} holds weights of model {metadata.get('model')!r}, not {model_name!r}.")
    return tensors


def load_weights(path: Path, model_name: str) -> torch.nn.Module:
    """Build ``model_name`` and load ``path`` into it, checking every tensor's name, shape and dtype."""
    tensors = read_safetensors(path, model_name)
    model = create_model(model_name)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match model {model_name!r} (missing: {missing[:3]}, "
                              f"unexpected: {extra[:3]}).")
    for name, ref in expected.items():
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {tuple(got.shape)} {got.dtype}, model {model_name!r} "
                                  f"expects {tuple(ref.shape)} {ref.dtype}.")
    model.load_state_dict(tensors)
    return model.eval()


def train_run(run: RunDir, data: MNIST, options: Options,
              on_epoch: Callable[[dict], None] | None = None,
              on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Train the run recorded in ``run`` to its end, continuing from its checkpoint when it has one;
    checkpoints every epoch; returns the summary. A finished run is returned as it is."""
    if run.finished():
        return run.summary()
    recipe = run.recipe()
    start = time.perf_counter()
    trainer = Trainer(recipe, data, options)
    tensors, history = run.load_checkpoint(recipe.model)
    if history:
        try:
            trainer.load_state(tensors, history)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint in {run.path} does not fit model {recipe.model!r} ({e}).") from None
    for metrics in history:
        if on_epoch:
            on_epoch(metrics)

    def end_of_epoch(t: Trainer, metrics: dict) -> None:
        run.save_checkpoint(recipe.model, t.state_tensors(), t.history)
        if on_epoch:
            on_epoch(metrics)

    fit(recipe, data, options, end_of_epoch, on_batch, trainer)
    return run.write_summary(count_params(trainer.model), trainer.history, str(trainer.device), trainer.precision,
                             time.perf_counter() - start, (trainer.mean, trainer.std))
