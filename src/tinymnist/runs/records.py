"""The run record: one directory per run, its schema, and the one way to name it.

    recipe.json          the header, written when the run starts: its RunSpec (step, recipe, options, the images
                         it trains and is tested on, tuning seeds, what the user overrode, where the recipe came
                         from), the normalization it uses, the user's model file it ran
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
``_upgrade_summary``, so no caller ever sees an old shape. This module stores and reads; building a run's
model from its artifacts is runs/loading.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from tinymnist import __version__
from tinymnist.errors import CheckpointError, UsageError
from tinymnist.files import exclusive, read_json, write_atomic, write_json
from tinymnist.names import current
from tinymnist.steps.builtin import all_steps
from tinymnist.training.recipes import Options, Recipe, RunSpec

if TYPE_CHECKING:
    import torch

# Reading a record loads neither torch nor the models (`tinymnist show`, `results`, `check` start fast): what
# writes weights, builds a user's model or asks the device imports them where it does so.

HEADER, METRICS, WEIGHTS, STATE, STATE_JSON, RUN_SUMMARY, LOCK, MODEL_FILE, JOURNEY_FILE = (
    "recipe.json", "metrics.jsonl", "weights.safetensors", "state.safetensors", "state.json", "summary.json",
    ".lock", "model.py", "journey.toml")
# 1: tinymnist 0.1.0 (subset inside options, normalization only in summary.json, verdict "targets");
# 2: 0.2.0 (no tuning seeds; a search trial's origin only in its step name, its tuning seed in "overrides")
SCHEMA = 3


def run_dir(root: str | os.PathLike, step: str, seed: int) -> Path:
    """Where the run of ``step`` with ``seed`` lives under ``root``: ROOT/STEP/seed-N. Built-in steps have
    plain names; names from elsewhere (a user's journey, a search) carry their own first path segment."""
    return Path(root, *step.split("/"), f"seed-{seed}")


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
    return dataclasses.replace(recipe, model=current("model", recipe.model))


def _upgrade_header(header: dict, summary: dict | None) -> dict:
    """A recipe.json of any schema, in the current one (``summary``: the run's summary.json, if it ended)."""
    schema = header.get("schema", 1)
    if schema >= SCHEMA:
        return header
    if schema == 1:
        options = dict(header.get("options", {}))
        subset = options.pop("subset", None)
        norm = (summary or {}).get("normalization")  # schema 1 recorded it in summary.json only, at the end
        header = {**header, "options": options, "data": {"train_images": subset, "test_images": None},
                  "normalization": norm}
    # Schema 2 knew tuning seeds only by the built-in step's name, or as "tuned_seed" among the overrides of a
    # confirmed search trial, whose study and trial were its step name: the one place a name is parsed.
    overrides = dict(header.get("overrides") or {})
    tuned = overrides.pop("tuned_seed", None)
    step, origin = current("step", header.get("step", ""), note=False), None
    if step.startswith("search/") and step.count("/") == 2:
        _, study, trial = step.split("/")
        origin = {"study": study, "trial": int(trial.removeprefix("trial-")),
                  "export": f"evidence/studies/{study}.json"}
    known = all_steps().get(step)
    tuned_seeds = [tuned] if tuned is not None else list(known.tuned_seeds) if known else []
    return {**header, "schema": SCHEMA, "overrides": overrides, "held_out": "test", "tuned_seeds": tuned_seeds,
            "origin": origin}


def _upgrade_summary(summary: dict) -> dict:
    verdict = summary.get("verdict", {})
    if "targets" in verdict:
        verdict = {"met": verdict["met"], "checks": verdict["targets"]}
    model = summary.get("model")
    return {**summary, "verdict": verdict, "model": current("model", model) if model else model}


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

    def create(self, spec: RunSpec, data_sizes: tuple[int, int], full_sizes: tuple[int, int],
               normalization: tuple[float, float]) -> None:
        """Start a new run of ``spec`` here, trained on ``data_sizes`` (train, test) images of ``full_sizes``;
        refuses a directory that already holds one. Call with the lock held."""
        if spec.held_out != "test":
            raise UsageError("a run record holds a run judged on the test set; a run scored on the validation "
                             "split belongs to a search trial.")
        if self.exists():
            same = self.recipe() == spec.recipe
            how = (f"resume it with --resume {self.path}" if same and not self.finished()
                   else "choose another --out")
            what = "this same recipe" if same else "a different run"
            raise UsageError(f"{self.path} already holds {what}; {how}.")
        from tinymnist.models import is_user_model, split_user_model

        train, test = data_sizes
        model_file = split_user_model(spec.recipe.model)[0] if is_user_model(spec.recipe.model) else None
        journey_file = Path(spec.journey_file) if spec.journey_file else None
        source, journey = self._keep_copy(model_file, MODEL_FILE), self._keep_copy(journey_file, JOURNEY_FILE)
        write_json(self / HEADER, {
            "schema": SCHEMA, "step": spec.step, "recipe": asdict(spec.recipe), "overrides": spec.overrides or {},
            "options": asdict(spec.options), "held_out": spec.held_out,
            "data": {"train_images": train if train != full_sizes[0] else None,
                     "test_images": test if test != full_sizes[1] else None},
            "tuned_seeds": list(spec.tuned_seeds), "origin": spec.origin,
            "normalization": {"mean": normalization[0], "std": normalization[1]},
            "model_source": source, "journey_source": journey, "tinymnist": __version__})
        write_atomic(self / METRICS, b"")

    def _keep_copy(self, origin: Path | None, name: str) -> dict | None:
        """Copy a user's file into the run as ``name``; its record: where it came from and its SHA-256."""
        if origin is None:
            return None
        from tinymnist.models import file_sha256

        write_atomic(self / name, origin.read_bytes())
        return {"file": name, "origin": str(origin.resolve()), "sha256": file_sha256(self / name)}

    def header(self) -> dict:
        raw = read_json(self / HEADER)
        if raw.get("schema", 1) >= SCHEMA:
            return raw
        return _upgrade_header(raw, read_json(self / RUN_SUMMARY) if self.finished() else None)

    def step(self) -> str:
        return current("step", self.header().get("step", ""))

    def spec(self) -> RunSpec:
        """The RunSpec this run was started with (what ``execute`` needs to train or resume it)."""
        header = self.header()
        train, test = self.data_sizes()
        journey = header.get("journey_source")
        return RunSpec(recipe=self.recipe(), options=self.options(), step=self.step(), held_out=header["held_out"],
                       train_images=train, held_out_images=test, tuned_seeds=tuple(header["tuned_seeds"]),
                       overrides=header.get("overrides") or {}, origin=header.get("origin"),
                       journey_file=journey["origin"] if journey else None)

    def recipe(self) -> Recipe:
        return recipe_from_dict(self.header().get("recipe", {}))

    def options(self) -> Options:
        """The options the run trains with. Runs record the precision and compile setting they resolved to; one
        recorded as 'auto' (tinymnist 0.3.0 and earlier) keeps what 'auto' meant then, and one from before
        --compile existed resumes uncompiled, as it began."""
        recorded = self.header().get("options", {})
        options = _from_dict(Options, {"compile": "off", **recorded})  # runs from before --compile trained eager
        if options.precision == "auto":
            from tinymnist.machine import earlier_auto, pick_device

            options = dataclasses.replace(options, precision=earlier_auto(pick_device(options.device)))
        return options

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
        from tinymnist.models import file_sha256

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

    def record_normalization(self, mean: float, std: float) -> None:
        """Write the normalization into a header that lacks it (an unfinished run of schema 1, resumed), in the
        current schema. Call with the lock held."""
        write_json(self / HEADER, {**self.header(), "normalization": {"mean": mean, "std": std}})

    def normalization(self) -> tuple[float, float] | None:
        """The mean and std the run normalizes its inputs with; None for an unfinished run of schema 1, which
        used its training images' own (what ``Trainer`` computes when given None)."""
        norm = self.header().get("normalization")
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

    def save_checkpoint(self, model: str, tensors: dict[str, torch.Tensor], history: list[dict],
                        weights: dict[str, torch.Tensor] | None = None) -> None:
        """Weights (``weights``: the model a run saves, default the trained one in ``tensors``) and training
        state at the end of an epoch; state.json is written last and names the epoch."""
        from safetensors.torch import save as st_save

        if weights is None:
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
               last_k: int, device: str, precision: str, compiled: bool, wall_seconds: float) -> dict:
        """Write summary.json (the judged figures come from the caller: the record does not judge)."""
        import torch

        from tinymnist.machine import cpu_name

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
            "compiled": compiled,  # the training step ran through torch.compile
            "commit": git_commit(), "wall_seconds": wall_seconds,
            "train_seconds": sum(m["train_seconds"] for m in history),
        }
        write_json(self / RUN_SUMMARY, summary)
        return summary

    def summary(self) -> dict:
        return _upgrade_summary(read_json(self / RUN_SUMMARY))

    # --- one writer at a time ------------------------------------------------------------------------------

    def lock(self) -> contextlib.AbstractContextManager:
        """Hold the run's advisory lock while writing it; the system drops it when the process ends, crash
        included. A second writer gets a UsageError naming the process that holds it."""
        return exclusive(self.path, LOCK, f"{self.path} is being written by process {{holder}}; wait for it to "
                                           f"finish (or stop it) before training this run again.")


# --- weights ---------------------------------------------------------------------------------------------------

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
    if current("model", recorded or "", note=False) != current("model", model, note=False):
        raise CheckpointError(f"{path} holds weights of model {recorded!r}, not {model!r}.")
    return tensors
