"""A run's metrics log, checkpoint and weights: what RunRecord writes and reads as each epoch ends."""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tinymnist.errors import CheckpointError, Note, UsageError
from tinymnist.files import append_regular, read_json, read_regular, write_atomic, write_json
from tinymnist.modelnames import is_user_model
from tinymnist.names import current
from tinymnist.runs.layout import METRICS, STATE, STATE_JSON, WEIGHTS
from tinymnist.runs.upgrade import _number

if TYPE_CHECKING:
    import torch


EPOCH_KEYS = ("epoch", "train_acc", "test_acc")  # what every reader of an epoch's line takes from it


def _epochs(history: object) -> bool:
    """Whether ``history`` (state.json's) is a list of epochs each with the figures readers take from it."""
    return isinstance(history, list) and all(
        isinstance(m, dict) and all(_number(m.get(k)) for k in EPOCH_KEYS) for m in history)


class Checkpoints:
    """RunRecord's metrics and checkpoints (a part of RunRecord: ``self`` is the record)."""

    def append_metrics(self, metrics: dict) -> None:
        append_regular(self / METRICS, (json.dumps(metrics) + "\n").encode())

    def _logged(self) -> tuple[list[dict], bool]:
        """The complete lines of metrics.jsonl, and whether a torn last line (a crash mid-write) was left out."""
        try:
            lines = read_regular(self / METRICS).decode(errors="replace").splitlines()
        except FileNotFoundError:
            return [], False
        rows = []
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not all(_number(row.get(k)) for k in EPOCH_KEYS):
                if i == len(lines) - 1:
                    return rows, True
                raise CheckpointError(f"{self / METRICS} line {i + 1} is corrupt; the run record is damaged.")
            rows.append(row)
        return rows, False

    def metrics(self) -> list[dict]:
        """Every epoch's metrics. A log behind its checkpoint (missing, emptied or torn: state.json holds every
        checkpointed epoch) is rewritten from state.json when the directory can be written, with a Note; a torn
        last line that state.json does not hold is left out, with a Note."""
        rows, torn = self._logged()
        behind = self.finished() and len(rows) < self.summary()["epochs"]
        history = self._state_history() if torn or behind else None
        if history is not None and len(history) > len(rows) and history[:len(rows)] == rows:
            try:
                write_atomic(self / METRICS, "".join(json.dumps(m) + "\n" for m in history).encode())
                how = "rewrote it"
            except OSError:
                how = "read them from there (the directory is read-only)"
            warnings.warn(Note(f"{self / METRICS} held {len(rows)} of the {len(history)} epochs in "
                               f"{self / STATE_JSON}; {how}."), stacklevel=2)
            return history
        if torn:
            warnings.warn(Note(f"{self / METRICS} ends in a torn line (a crash while writing it), left out; "
                               f"{len(rows)} epochs read."), stacklevel=2)
        return rows

    def _state_history(self) -> list[dict] | None:
        try:
            state = read_json(self / STATE_JSON)
        except UsageError:  # no state.json
            return None
        history = state.get("history") if isinstance(state, dict) else None
        return history if _epochs(history) else None

    def test_accs(self) -> list[float]:
        return [m["test_acc"] for m in self.metrics()]

    def save_checkpoint(self, model: str, tensors: dict[str, torch.Tensor], history: list[dict],
                        weights: dict[str, torch.Tensor] | None = None) -> None:
        """Weights (``weights``: the model a run saves, default the trained one in ``tensors``) and training
        state at the end of an epoch; state.json is written last and names the epoch."""
        from safetensors.torch import save as st_save

        if weights is None:
            weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        model = _weights_name(model)
        write_atomic(self / WEIGHTS, st_save(weights, metadata={"model": model, "epoch": str(len(history))}))
        write_atomic(self / STATE, st_save(tensors, metadata={"model": model, "epoch": str(len(history))}))
        write_json(self / STATE_JSON, {"epoch": len(history), "history": history})
        # metrics.jsonl follows the checkpoint: one line appended per epoch; rewritten whole from the history
        # when a crash left it torn, behind or ahead.
        rows, torn = self._logged()
        if not torn and len(rows) == len(history) - 1:
            self.append_metrics(history[-1])
        elif torn or len(rows) != len(history):
            write_atomic(self / METRICS, "".join(json.dumps(m) + "\n" for m in history).encode())

    def load_checkpoint(self, model: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        state = read_json(self / STATE_JSON) if (self / STATE_JSON).exists() else None
        if state is None:
            return {}, []
        tensors = read_safetensors(self / STATE, model)
        history = state.get("history", []) if isinstance(state, dict) else None
        if not _epochs(history) or len(history) != state.get("epoch"):
            raise CheckpointError(f"{self / STATE_JSON} is inconsistent (its epoch and its history disagree); the "
                                  f"checkpoint is damaged.")
        return tensors, history

    def discard(self) -> None:
        """Remove this run's directory: a run that failed before its first epoch was recorded (nothing to
        resume), so a retry starts clean. Refused (left as it is) once an epoch is checkpointed."""
        if self.started():
            return
        levels = len(self.step().split("/")) if self.exists() else 0  # ROOT/STEP/seed-N: STEP's own folders
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.path.parents[:levels]:
            with contextlib.suppress(OSError):  # one left empty only
                parent.rmdir()
        self._header = self._summary = None


# --- weights ---------------------------------------------------------------------------------------------------

def _weights_name(model: str) -> str:
    """The model name weights carry: a user's file by its name alone (where it lies is no part of the model)."""
    if not is_user_model(model):
        return model
    file, _, name = model.rpartition(".py:")
    return f"{Path(file).name}.py:{name}"


def read_safetensors(path: Path, model: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file written for ``model``; a clear CheckpointError on anything wrong."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; the run has no checkpoint yet.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt.") from None
    recorded = metadata.get("model")
    recorded_name, name = (current("model", m, note=False).rpartition(".py:")[2] for m in (recorded or "", model))
    if recorded_name != name:  # a user's file by the name in it: the file's own name and place may change
        raise CheckpointError(f"{path} holds weights of model {recorded!r}, not {model!r}.")
    return tensors
