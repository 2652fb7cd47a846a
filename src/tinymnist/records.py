"""The run record: one directory per run, its schema, and the one way to name it.

    recipe.json          the header: step, recipe, what was overridden, run options, the data it trained on,
                         the normalization it uses, the user's model file it ran (written when the run starts)
    model.py             for a user's model: a copy of its file (recipe.json has its SHA-256 and origin)
    journey.toml         for a step of a user's journey file: a copy of that file, likewise
    metrics.jsonl        one line appended (and fsynced) as each epoch ends
    weights.safetensors  the model's weights, with the model name in the metadata
    state.safetensors    optimizer and random-generator state at the last completed epoch (for --resume)
    state.json           the history up to that epoch
    summary.json         written when the run ends: figures, verdict, provenance
    .lock                held (advisory lock) by the one process writing the run

Every file is written atomically (temporary file, fsync, rename) with the mode the umask gives any new file;
nothing is pickled. Records written by earlier versions are read through ``_upgrade_header`` and
``_upgrade_summary``, so no caller ever sees an old shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from . import __version__
from .data import MNIST
from .errors import CheckpointError, UsageError, renamed
from .models import RENAMED as RENAMED_MODELS
from .models import count_params, create_model, file_sha256, is_user_model, model_name, split_user_model
from .recipes import RENAMED_STEPS, Options, Recipe

HEADER, METRICS, WEIGHTS, STATE, STATE_JSON, RUN_SUMMARY, LOCK, MODEL_FILE, JOURNEY_FILE = (
    "recipe.json", "metrics.jsonl", "weights.safetensors", "state.safetensors", "state.json", "summary.json",
    ".lock", "model.py", "journey.toml")
SCHEMA = 2  # 1: tinymnist 0.1.0 (subset inside options, normalization only in summary.json, verdict "targets")


def run_dir(root: str | os.PathLike, step: str, seed: int) -> Path:
    """Where the run of ``step`` with ``seed`` lives under ``root``: ROOT/STEP/seed-N. Built-in steps have
    plain names; names from elsewhere (a user's journey, a search) carry their own first path segment."""
    return Path(root, *step.split("/"), f"seed-{seed}")


# --- files -------------------------------------------------------------------------------------------------

def _file_mode() -> int:
    """The mode the umask gives a new file (0o666 less the umask), as open() would."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())  # mkstemp creates 0600, and rename keeps the mode
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


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- the schema ----------------------------------------------------------------------------------------------

def _from_dict(cls: type, d: dict) -> object:
    """A frozen dataclass from its recorded fields (fields this version does not know are left out)."""
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in known})
    except TypeError as e:
        raise CheckpointError(f"the recorded {cls.__name__.lower()} cannot be read ({e}).") from None


def recipe_from_dict(d: dict) -> Recipe:
    recipe = _from_dict(Recipe, d)
    if recipe.model in RENAMED_MODELS:
        return Recipe(**{**asdict(recipe), "model": model_name(recipe.model)})
    return recipe


@dataclass(frozen=True)
class NewRun:
    """What starts a run: the step it belongs to, the recipe (seed included), how to run it, and what the user
    overrode."""

    step: str
    recipe: Recipe
    options: Options = Options()
    overrides: dict | None = None
    journey_file: Path | None = None  # a user's journey file the step comes from (a copy is kept)


def _upgrade_header(header: dict) -> dict:
    """A recipe.json of any schema, in the current one."""
    if header.get("schema", 1) >= SCHEMA:
        return header
    options = dict(header.get("options", {}))
    subset = options.pop("subset", None)
    return {**header, "schema": SCHEMA, "options": options,
            "data": {"train_images": subset, "test_images": None},  # None: the whole split
            "normalization": None}  # schema 1 recorded it in summary.json only


def _upgrade_summary(summary: dict) -> dict:
    verdict = summary.get("verdict", {})
    if "targets" in verdict:
        verdict = {"met": verdict["met"], "checks": verdict["targets"]}
    model = summary.get("model")
    return {**summary, "verdict": verdict, "model": model_name(model) if model in RENAMED_MODELS else model}


class RunRecord:
    """One run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return (self / HEADER).is_file()

    def finished(self) -> bool:
        return (self / RUN_SUMMARY).is_file()

    def require(self, finished: bool = False) -> RunRecord:
        """This run, or a UsageError saying what it lacks: a record, weights, or (``finished``) its end."""
        if not self.exists():
            raise UsageError(f"{self.path} is not a run directory (no {HEADER}); give a directory that "
                             f"`tinymnist train` or `tinymnist consistency` wrote.")
        if not (self / WEIGHTS).is_file():
            raise UsageError(f"{self.path} has no weights yet (no completed epoch); train or resume it first.")
        if finished and not self.finished():
            raise UsageError(f"{self.path} is not finished; finish it with: tinymnist train --resume {self.path}")
        return self

    # --- the header --------------------------------------------------------------------------------------

    def create(self, new: NewRun, data_sizes: tuple[int, int], full_sizes: tuple[int, int],
               normalization: tuple[float, float]) -> None:
        """Start a new run here; refuses a directory that already holds one. Call with the lock held."""
        if self.exists():
            same = self.recipe() == new.recipe
            how = (f"resume it with --resume {self.path}" if same and not self.finished()
                   else "choose another --out")
            what = "this same recipe" if same else "a different run"
            raise UsageError(f"{self.path} already holds {what}; {how}.")
        train, test = data_sizes
        model_file = split_user_model(new.recipe.model)[0] if is_user_model(new.recipe.model) else None
        source, journey = self._keep_copy(model_file, MODEL_FILE), self._keep_copy(new.journey_file, JOURNEY_FILE)
        write_json(self / HEADER, {
            "schema": SCHEMA, "step": new.step, "recipe": asdict(new.recipe), "overrides": new.overrides or {},
            "options": asdict(new.options),
            "data": {"train_images": train if train != full_sizes[0] else None,
                     "test_images": test if test != full_sizes[1] else None},
            "normalization": {"mean": normalization[0], "std": normalization[1]},
            "model_source": source, "journey_source": journey, "tinymnist": __version__})
        write_atomic(self / METRICS, b"")

    def _keep_copy(self, origin: Path | None, name: str) -> dict | None:
        """Copy a user's file into the run as ``name``; its record: where it came from and its SHA-256."""
        if origin is None:
            return None
        write_atomic(self / name, origin.read_bytes())
        return {"file": name, "origin": str(origin.resolve()), "sha256": file_sha256(self / name)}

    def header(self) -> dict:
        return _upgrade_header(read_json(self / HEADER))

    def step(self) -> str:
        name = self.header().get("step", "")
        return renamed("step", name, RENAMED_STEPS[name]) if name in RENAMED_STEPS else name

    def recipe(self) -> Recipe:
        return recipe_from_dict(self.header().get("recipe", {}))

    def options(self) -> Options:
        return _from_dict(Options, self.header().get("options", {}))

    def data_sizes(self) -> tuple[int | None, int | None]:
        """(training images, test images) the run used; None where it used the whole split."""
        data = self.header()["data"]
        return data["train_images"], data["test_images"]

    def model_source(self, trust: bool = False) -> Path | None:
        """Where a user model's code is read from: its original file when that is present and unchanged (same
        SHA-256), else, only when ``trust`` is given, the copy this run kept (code the user did not necessarily
        write). None for a registered model."""
        source = self.header().get("model_source")
        if not source:
            return None
        kept, origin = self / source["file"], Path(source["origin"])
        if origin.is_file() and file_sha256(origin) == source["sha256"]:
            return origin
        if not kept.is_file() or file_sha256(kept) != source["sha256"]:
            raise CheckpointError(f"{kept} is missing or differs from the model file this run recorded "
                                  f"(SHA-256 {source['sha256'][:12]}...); the run record is damaged.")
        if trust:
            return kept
        why = "has changed since this run" if origin.exists() else "is gone"
        raise UsageError(f"the model file {origin} {why}; using this run means running the copy of it kept in "
                         f"{kept}, code you may not have written: read it, then pass --trust-remote-code.")

    def normalization(self) -> tuple[float, float] | None:
        """The mean and std the run normalizes its inputs with; None for an unfinished run of schema 1, which
        used its training images' own (what ``Trainer`` computes when given None)."""
        norm = self.header().get("normalization") or (self.summary() if self.finished() else {}).get("normalization")
        return (norm["mean"], norm["std"]) if norm else None

    # --- metrics and checkpoints ---------------------------------------------------------------------------

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

    def test_accs(self) -> list[float]:
        return [m["test_acc"] for m in self.metrics()]

    def save_checkpoint(self, model: str, tensors: dict[str, torch.Tensor], history: list[dict]) -> None:
        """Weights and training state at the end of an epoch; state.json is written last and names the epoch."""
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        write_atomic(self / WEIGHTS, st_save(weights, metadata={"model": model, "epoch": str(len(history))}))
        write_atomic(self / STATE, st_save(tensors, metadata={"model": model, "epoch": str(len(history))}))
        write_json(self / STATE_JSON, {"epoch": len(history), "history": history})
        # metrics.jsonl follows the checkpoint: one line appended per epoch; rewritten whole from the history
        # when a crash left it torn, behind or ahead.
        raw = (self / METRICS).read_bytes() if (self / METRICS).exists() else b""
        intact = not raw or raw.endswith(b"\n")
        if intact and len(self.metrics()) == len(history) - 1:
            self.append_metrics(history[-1])
        elif not intact or len(self.metrics()) != len(history):
            write_atomic(self / METRICS, "".join(json.dumps(m) + "\n" for m in history).encode())

    def load_checkpoint(self, model: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        state = read_json(self / STATE_JSON) if (self / STATE_JSON).exists() else None
        if state is None:
            return {}, []
        tensors = read_safetensors(self / STATE, model)
        history = state.get("history", [])
        if len(history) != state.get("epoch"):
            raise CheckpointError(f"{self / STATE_JSON} is inconsistent (epoch {state.get('epoch')}, "
                                  f"{len(history)} history rows); the checkpoint is damaged.")
        return tensors, history

    # --- the end -------------------------------------------------------------------------------------------

    def finish(self, *, params: int, history: list[dict], verdict: dict, first_epoch_holding: int | None,
               last_k: int, device: str, precision: str, wall_seconds: float,
               normalization: tuple[float, float]) -> dict:
        """Write summary.json (the judged figures come from the caller: the record does not judge)."""
        test_accs = [m["test_acc"] for m in history]
        summary = {
            "model": self.recipe().model, "params": params, "epochs": len(history),
            "best_train_acc": max(m["train_acc"] for m in history), "last_train_acc": history[-1]["train_acc"],
            "best_test_acc": max(test_accs), "last_test_acc": test_accs[-1],
            f"min_test_acc_last_{last_k}": min(test_accs[-last_k:]),
            "first_epoch_holding": first_epoch_holding, "verdict": verdict,
            "torch": torch.__version__, "device": device, "precision": precision, "platform": platform.platform(),
            "cpu": cpu_name(),  # bf16 kernels differ between CPUs (AVX512-BF16, AMX): so do the numbers
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "commit": git_commit(), "wall_seconds": wall_seconds,
            "train_seconds": sum(m["train_seconds"] for m in history),
            "normalization": {"mean": normalization[0], "std": normalization[1]},
        }
        write_json(self / RUN_SUMMARY, summary)
        return summary

    def summary(self) -> dict:
        return _upgrade_summary(read_json(self / RUN_SUMMARY))

    # --- one writer at a time ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's advisory lock while writing it; the system drops it when the process ends, crash
        included. A second writer gets a UsageError naming the process that holds it."""
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self / LOCK, os.O_RDWR | os.O_CREAT, _file_mode())
        except OSError as e:
            raise UsageError(f"cannot write the run directory {self.path} ({e.strerror}); choose another --out.") \
                from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise UsageError(f"{self.path} is being written by process {holder}; wait for it to finish "
                                 f"(or stop it) before training this run again.") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} on {platform.node()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def data_for(run: RunRecord, data: MNIST) -> MNIST:
    """``data`` cut to the images ``run`` trained and was tested on (a run on a subset resumes, and is
    evaluated, on the same subset)."""
    train, test = run.data_sizes()
    want = (train or len(data.train_labels), test or len(data.test_labels))
    if want == (len(data.train_labels), len(data.test_labels)):
        return data
    if want[0] > len(data.train_labels) or want[1] > len(data.test_labels):
        raise UsageError(f"{run.path} trained on {want[0]:,} training and {want[1]:,} test images, more than the "
                         f"data given has; point --data-dir at the full MNIST.")
    return data.subset(*want)


# --- weights ---------------------------------------------------------------------------------------------------

def read_safetensors(path: Path, model: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file written for ``model``; a clear CheckpointError on anything wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; the run has no checkpoint yet.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt.") from None
    recorded = metadata.get("model")
    if RENAMED_MODELS.get(recorded, recorded) != RENAMED_MODELS.get(model, model):
        raise CheckpointError(f"{path} holds weights of model {recorded!r}, not {model!r}.")
    return tensors


def load_weights(path: Path, model: str, source: Path | None = None) -> torch.nn.Module:
    """Build ``model`` (a user's from ``source``) and load ``path`` into it, checking every tensor's name, shape
    and dtype."""
    tensors = read_safetensors(path, model)
    module = create_model(model, source)
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match model {model!r} (missing: {missing[:3]}, "
                              f"unexpected: {extra[:3]}).")
    for name, ref in expected.items():
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {tuple(got.shape)} {got.dtype}, model {model!r} "
                                  f"expects {tuple(ref.shape)} {ref.dtype}.")
    module.load_state_dict(tensors)
    return module.eval()


@dataclass
class LoadedModel:
    """A run's trained model with everything needed to feed it as it was trained."""

    name: str
    model: torch.nn.Module
    mean: float
    std: float
    precision: str  # what it trained with: evaluating with the same gives the recorded accuracy
    channels_last: bool

    @property
    def params(self) -> int:
        return count_params(self.model)


def load_model(run: RunRecord, trust: bool = False) -> LoadedModel:
    """The one way to load a run's model: its weights, with its recorded normalization and precision (a user's
    model under the trust rule of ``RunRecord.model_source``)."""
    recipe, options = run.require().recipe(), run.options()
    precision = run.summary().get("precision") if run.finished() else None
    normalization = run.normalization()
    if normalization is None:
        raise UsageError(f"{run.path} records no normalization (an unfinished run of an earlier version); "
                         f"finish it with: tinymnist train --resume {run.path}")
    mean, std = normalization
    return LoadedModel(recipe.model, load_weights(run / WEIGHTS, recipe.model, run.model_source(trust)), mean, std,
                       precision or options.precision, options.channels_last)
