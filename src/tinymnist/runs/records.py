"""The run record: one directory per run, its schema, and the one way to name it.

    recipe.json          the header, written when the run starts: its RunSpec (step, recipe, options, the images
                         it trains and is tested on, tuning seeds, what the user overrode, where the recipe came
                         from), the normalization it uses, the user's model file it ran (its SHA-256, and its path
                         relative to the run directory). Its identity (``identity``) is read from these fields.
    model.py             for a user's model: a copy of its file (recipe.json has its SHA-256 and origin)
    journey.toml         for a step of a user's journey file: a copy of that file, likewise
    metrics.jsonl        one line appended (and fsynced) as each epoch ends
    weights.safetensors  the model's weights, with the model name in the metadata
    state.safetensors    optimizer and random-generator state at the last completed epoch (for --resume)
    state.json           the history up to that epoch
    summary.json         written when the run ends: figures, verdict, provenance
    .lock                held (advisory lock) by the one process writing the run

Every file is written atomically (temporary file, fsync, rename) with the mode the umask gives any new file,
and read without following symlinks; nothing is pickled. Records written by earlier versions are read through
``upgrade`` (every compatibility branch, by schema) and then checked by ``_checked`` (the one validation), so no
caller ever sees an old or damaged shape. A record never chooses code to run: ``RunRecord.model_source`` is the
one trust rule. This module stores and reads; building a run's model from its artifacts is runs/loading.py's;
the schema's upgrades and validation are runs/upgrade.py's, a run's identity runs/identity.py's, its metrics,
checkpoint and weights runs/checkpoint.py's, the files' names runs/layout.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

from tinymnist import __version__
from tinymnist.errors import CheckpointError, UsageError
from tinymnist.files import exclusive, read_json, write_atomic, write_json
from tinymnist.modelnames import file_sha256, is_user_model, split_user_model
from tinymnist.names import current
from tinymnist.runs.checkpoint import Checkpoints
from tinymnist.runs.checkpoint import read_safetensors as read_safetensors  # where loading.py finds it
from tinymnist.runs.identity import _differences, _identity, _images
from tinymnist.runs.identity import identity as identity  # where runner.identity finds it
from tinymnist.runs.layout import HEADER, JOURNEY_FILE, LOCK, METRICS, MODEL_FILE, RUN_SUMMARY, STATE_JSON, WEIGHTS
from tinymnist.runs.upgrade import (
    _HEADER_FIELDS,
    _SUMMARY_FIELDS,
    SCHEMA,
    _checked,
    _from_dict,
    _upgrade_summary,
    upgrade,
)
from tinymnist.targets import LAST_K
from tinymnist.training.recipes import Options, Recipe, RunSpec

# Reading a record loads neither torch nor the models (`tinymnist show`, `results`, `check` start fast): what
# writes weights, builds a user's model or asks the device imports them where it does so.


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

def recipe_from_dict(d: dict) -> Recipe:
    recipe = _from_dict(Recipe, d)
    return dataclasses.replace(recipe, model=current("model", recipe.model))


class RunRecord(Checkpoints):
    """One run's directory. Its recipe.json is read once (and summary.json once it exists): accessors share it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._header: dict | None = None
        self._summary: dict | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return (self / HEADER).is_file()

    def finished(self) -> bool:
        return (self / RUN_SUMMARY).is_file()

    def started(self) -> bool:
        """Whether an epoch has been checkpointed (state.json names it)."""
        return (self / STATE_JSON).is_file()

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
        """Start a new run of ``spec`` here, trained on ``data_sizes`` (train, test) images of ``full_sizes``.
        A directory holding a run of another identity is refused, naming what differs; one of the same identity
        that never completed an epoch (a crash before it) is started again; one that did is resumed or kept.
        Call with the lock held."""
        if spec.held_out != "test":
            raise UsageError("a run record holds a run judged on the test set; a run scored on the validation "
                             "split belongs to a search trial.")
        model_file = split_user_model(spec.recipe.model)[0] if is_user_model(spec.recipe.model) else None
        wanted = _identity(spec, data_sizes, full_sizes, file_sha256(model_file) if model_file else None)
        if self.exists():
            differs = self.differs_from(wanted)
            if differs:
                raise UsageError(f"{self.path} holds a run that differs in its {' and its '.join(differs)}; train into "
                                 f"a new --runs folder, or delete {self.path} to replace it.")
            if self.finished():
                raise UsageError(f"{self.path} already holds this same run, finished; see `tinymnist show "
                                 f"{self.path}`, or train into a new --runs folder.")
            if self.started():
                raise UsageError(f"{self.path} already holds this same run, unfinished; resume it with "
                                 f"--resume {self.path}.")
        train, test = data_sizes
        journey_file = Path(spec.journey_file) if spec.journey_file else None
        source, journey = self._keep_copy(model_file, MODEL_FILE), self._keep_copy(journey_file, JOURNEY_FILE)
        header = {
            "schema": SCHEMA, "step": spec.step, "recipe": {**asdict(spec.recipe), "model": self._relative(model_file,
                                                                                                   spec.recipe.model)},
            "overrides": spec.overrides or {},
            "options": asdict(spec.options), "held_out": spec.held_out,
            "data": {"train_images": train if train != full_sizes[0] else None,
                     "test_images": test if test != full_sizes[1] else None,
                     "train_of": full_sizes[0], "test_of": full_sizes[1]},
            "tuned_seeds": list(spec.tuned_seeds), "origin": spec.origin,
            "normalization": {"mean": normalization[0], "std": normalization[1]},
            "model_source": source, "journey_source": journey, "tinymnist": __version__}
        write_json(self / HEADER, header)
        write_atomic(self / METRICS, b"")
        self._header, self._summary = _checked(header, self / HEADER, _HEADER_FIELDS), None

    def _relative(self, model_file: Path | None, model: str) -> str:
        """A user's FILE.py:NAME with FILE relative to the run directory (``recipe`` reads it back)."""
        if model_file is None:
            return model
        return f"{os.path.relpath(model_file.resolve(), self.path.resolve())}:{model.rpartition('.py:')[2]}"

    def _keep_copy(self, origin: Path | None, name: str) -> dict | None:
        """Copy a user's file into the run as ``name``; its record: its SHA-256 and where it came from, relative
        to the run directory (a record names no one's home directory)."""
        if origin is None:
            return None

        write_atomic(self / name, origin.read_bytes())
        where = os.path.relpath(origin.resolve(), self.path.resolve())
        return {"file": name, "origin": where, "sha256": file_sha256(self / name)}

    def header(self) -> dict:
        """recipe.json in the current schema, validated (read once)."""
        if self._header is None:
            raw = _checked(read_json(self / HEADER), self / HEADER, ())
            summary = _checked(read_json(self / RUN_SUMMARY), self / RUN_SUMMARY, ()) if self.finished() else None
            try:
                header, summary = upgrade(raw, summary)
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self / HEADER} of schema {raw.get('schema', 1)!r} cannot be read ({e!r}); "
                                      f"the run record is damaged.") from None
            self._header = _checked(header, self / HEADER, _HEADER_FIELDS)
            if summary is not None:
                self._summary = _upgrade_summary(_checked(summary, self / RUN_SUMMARY, _SUMMARY_FIELDS))
        return self._header

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
                       journey_file=str(self.path / journey["origin"]) if journey else None)

    def recipe(self) -> Recipe:
        """The recipe; a user's model file by its absolute path (recorded relative to the run directory)."""
        recipe = recipe_from_dict(self.header()["recipe"])
        if is_user_model(recipe.model) and self.header().get("upgraded_from", SCHEMA) >= SCHEMA:
            file, _, name = recipe.model.rpartition(".py:")
            where = os.path.normpath(self.path.resolve() / f"{file}.py")  # an absolute FILE stays itself
            recipe = dataclasses.replace(recipe, model=f"{where}:{name}")
        return recipe

    def options(self) -> Options:
        """The options the run trains with, as it resolved them (``upgrade`` says what older records meant)."""
        return _from_dict(Options, self.header()["options"])

    def data_sizes(self) -> tuple[int | None, int | None]:
        """(training images, test images) the run used; None where it used the whole split."""
        data = self.header()["data"]
        return data["train_images"], data["test_images"]

    def data_line(self) -> str:
        """The images the run trained on, in words: '2,000 of 60,000 training images', 'all 60,000 training
        images' (without the total for a record of an earlier version, which did not hold it)."""
        data = self.header()["data"]
        return _images(data["train_images"], data.get("train_of"), "training images")

    def identity(self) -> dict:
        """This run's identity (the shape ``identity`` gives); parts an earlier record lacks are UNKNOWN (the
        model file's hash) or None (the full splits' sizes: not compared)."""
        header, recipe = self.header(), self.recipe()
        source = header.get("model_source")
        data = header["data"]
        run = RunSpec(recipe=recipe, options=self.options(), held_out=header["held_out"])
        found = _identity(run, (0, 0), (0, 0), source["sha256"] if source else None)
        found["data"] = {"held_out": header["held_out"], "train_images": data["train_images"],
                         "train_of": data.get("train_of"), "test_images": data["test_images"],
                         "test_of": data.get("test_of")}
        return found

    def differs_from(self, other: dict) -> list[str]:
        """The parts of the identity ``other`` (from ``identity``) this run differs in, in words ("model file's
        code (its SHA-256 differs)", "data (2,000 of 60,000 training images ... here, ... asked)"); empty when it
        is the same run. A part this record does not know differs: an old run is never reused for a user's file
        whose hash it lacks."""
        return _differences(self.identity(), other)

    def model_source(self, trust: bool = False) -> Path | None:
        """The one trust rule: where a user model's code may be imported from, or one sentence refusing. The
        record never chooses code: its origin is used only when it resolves (symlinks followed) to a regular file
        outside this run directory (and outside any other) whose SHA-256 is the recorded one; the copy this run
        kept only with ``trust`` (--trust-remote-code). A relative origin of a record before schema 4 (read
        against whatever folder the command ran in), an origin inside a run directory, or a user model with no
        recorded source is refused. None for a registered model."""
        model = self.recipe().model
        if not is_user_model(model):
            return None
        source = self.header().get("model_source")
        if not source or source["file"] != MODEL_FILE:
            raise UsageError(f"{self.path} names the model file {model} but records no kept copy and hash of it; "
                             f"a run record never chooses code to run: train your model file again.")
        kept, run_dir = self / MODEL_FILE, self.path.resolve()
        origin, why = Path(source["origin"]), None
        if not origin.is_absolute() and self.header().get("upgraded_from", SCHEMA) < SCHEMA:
            why = f"records its model file as the relative path {origin}"
        else:
            origin = (run_dir / origin).resolve()  # an absolute origin stays itself
            if origin == run_dir or run_dir in origin.parents or any((d / HEADER).exists() for d in origin.parents):
                why = f"records its model file as {origin}, inside a run directory"
            elif origin.is_file() and file_sha256(origin) == source["sha256"]:
                return origin
            else:
                why = f"records the model file {origin}, which {'has changed' if origin.exists() else 'is gone'}"
        if kept.is_symlink() or not kept.is_file() or file_sha256(kept) != source["sha256"]:
            raise CheckpointError(f"{kept} is missing or differs from the model file this run recorded "
                                  f"(SHA-256 {source['sha256'][:12]}...); the run record is damaged.")
        if trust:
            return kept
        raise UsageError(f"{self.path} {why}; using this run means running the copy of it kept in {kept}, code "
                         f"you may not have written: read it, then pass --trust-remote-code.")

    def record_normalization(self, mean: float, std: float) -> None:
        """Write the normalization into a header that lacks it (an unfinished run of schema 1, resumed), in the
        current schema. Call with the lock held."""
        header = {**self.header(), "normalization": {"mean": mean, "std": std}}
        write_json(self / HEADER, header)
        self._header = header

    def normalization(self) -> tuple[float, float] | None:
        """The mean and std the run normalizes its inputs with; None for an unfinished run of schema 1, which
        used its training images' own (what ``Trainer`` computes when given None)."""
        norm = self.header().get("normalization")
        return (norm["mean"], norm["std"]) if norm else None

    # --- the end -------------------------------------------------------------------------------------------

    def finish(self, *, params: int, history: list[dict], verdict: dict, first_epoch_holding: int | None,
               last_k: int, device: str, precision: str, compiled: bool, wall_seconds: float) -> dict:
        """Write summary.json (the judged figures come from the caller: the record does not judge)."""
        import torch

        from tinymnist.machine import cpu_name

        test_accs = [m["test_acc"] for m in history]
        summary = {
            "model": self.header()["recipe"]["model"], "params": params, "epochs": len(history),  # a user's file
            # relative to the run, as recipe.json has it: a summary committed with a hand-in names no home folder
            "best_train_acc": max(m["train_acc"] for m in history), "last_train_acc": history[-1]["train_acc"],
            "best_test_acc": max(test_accs), "last_test_acc": test_accs[-1],
            # the same keys whatever window was judged: the exercise's last LAST_K epochs, and the judged window
            f"min_test_acc_last_{LAST_K}": min(test_accs[-LAST_K:]), "last_k": last_k,
            "min_test_acc_last_k": min(test_accs[-last_k:]),
            "first_epoch_holding": first_epoch_holding, "verdict": verdict,
            "torch": torch.__version__, "device": device, "precision": precision, "platform": platform.platform(),
            "cpu": cpu_name(),  # bf16 kernels differ between CPUs (AVX512-BF16, AMX): so do the numbers
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "compiled": compiled,  # the training step ran through torch.compile
            "commit": git_commit(), "wall_seconds": wall_seconds,
            "train_seconds": sum(m["train_seconds"] for m in history),
        }
        write_json(self / RUN_SUMMARY, summary)
        self._summary = _upgrade_summary(summary)
        return summary

    def summary(self) -> dict:
        """summary.json, upgraded and validated (read once)."""
        if self._summary is None:
            self._header = None  # the summary is read with its header: schema 1 kept the normalization there
            self.header()
            if self._summary is None:
                raise UsageError(f"{self.path} is not finished (no {RUN_SUMMARY}); finish it with: tinymnist train "
                                 f"--resume {self.path}")
        return self._summary

    # --- one writer at a time ------------------------------------------------------------------------------

    def lock(self) -> contextlib.AbstractContextManager:
        """Hold the run's advisory lock while writing it; the system drops it when the process ends, crash
        included. A second writer gets a UsageError naming the process that holds it."""
        return exclusive(self.path, LOCK, f"{self.path} is being written by process {{holder}}; wait for it to "
                                           f"finish (or stop it) before training this run again.")
