"""The run record's schema: every upgrade of an earlier recipe.json and summary.json, and the one validation."""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from pathlib import Path

from tinymnist.errors import CheckpointError
from tinymnist.names import current
from tinymnist.training.recipes import HELD_OUT

# 1: tinymnist 0.1.0 (subset inside options, normalization only in summary.json, verdict "targets");
# 2: 0.2.0 (no tuning seeds; a search trial's origin only in its step name, its tuning seed in "overrides");
# 3: 0.3.0-0.4.0 (absolute paths of the user's files; no sizes of the full splits; precision may be "auto")
SCHEMA = 4


def upgrade(header: dict, summary: dict | None) -> tuple[dict, dict | None]:
    """recipe.json and summary.json (None: not finished) of any schema, in the current one: every compatibility
    branch of the run record lives here, and reads only the record and this function's own frozen tables (never
    today's step catalogue, so editing a step never changes what an old record means)."""
    schema = header.get("schema", 1)
    if summary is not None and "targets" in (summary.get("verdict") or {}):  # 1: a verdict's checks: "targets"
        verdict = summary["verdict"]
        summary = {**summary, "verdict": {"met": verdict["met"], "checks": verdict["targets"]}}
    if schema >= SCHEMA:
        return header, summary
    if schema == 1:
        options = dict(header.get("options", {}))
        subset = options.pop("subset", None)
        norm = (summary or {}).get("normalization")  # schema 1 recorded it in summary.json only, at the end
        header = {**header, "options": options, "data": {"train_images": subset, "test_images": None},
                  "normalization": norm}
    if schema <= 2:
        header = _upgrade_provenance(header)
    # 3 and earlier: a run from before --compile trained eager; 'auto' precision (0.3.0 and earlier) meant bf16
    # where the hardware has it natively; the full splits' sizes were not recorded (the identity says unknown).
    options = {"compile": "off", **(header.get("options") or {})}
    if options.get("precision") == "auto":
        from tinymnist.machine import earlier_auto, pick_device

        options["precision"] = earlier_auto(pick_device(options.get("device", "auto")))
    return {**header, "schema": SCHEMA, "options": options, "upgraded_from": schema}, summary


# The seeds the built-in steps were tuned on, as tinymnist 0.1.0 and 0.2.0 (schemas 1 and 2, which did not
# record them) meant them: frozen here, by the step's current name.
_TUNED_SEEDS_BEFORE_SCHEMA_3 = {
    **{f"original_step{i}": (121,) for i in range(1, 5)},
    **{f"compact_step{i}": (1, 2, 3, 4, 5) for i in range(1, 5)},
    "frontier_3k8": (1,), "frontier_sep_3k8": (1, 2, 3, 4, 5), "frontier_sep_2k8": (1, 2),
}


def _upgrade_provenance(header: dict) -> dict:
    """Schema 2 and earlier knew tuning seeds only by the built-in step's name, or as "tuned_seed" among the
    overrides of a confirmed search trial, whose study and trial were its step name: the one place a name is
    parsed."""
    overrides = dict(header.get("overrides") or {})
    tuned = overrides.pop("tuned_seed", None)
    step, origin = current("step", str(header.get("step", "")), note=False), None
    if step.startswith("search/") and step.count("/") == 2:
        _, study, trial = step.split("/")
        origin = {"study": study, "trial": int(trial.removeprefix("trial-")),
                  "export": f"evidence/studies/{study}.json"}
    tuned_seeds = [tuned] if tuned is not None else list(_TUNED_SEEDS_BEFORE_SCHEMA_3.get(step, ()))
    return {**header, "overrides": overrides, "held_out": "test", "tuned_seeds": tuned_seeds, "origin": origin}


# --- the one validation --------------------------------------------------------------------------------------

def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _file_record(v: object) -> bool:
    return v is None or (isinstance(v, dict) and isinstance(v.get("file"), str) and isinstance(v.get("origin"), str)
                         and isinstance(v.get("sha256"), str))


_HEADER_FIELDS = (  # (field, test, what it must be)
    ("step", lambda h: isinstance(h.get("step"), str), "a step name"),
    ("recipe", lambda h: isinstance(h.get("recipe"), dict) and isinstance(h["recipe"].get("model"), str),
     "an object naming a model"),
    ("options", lambda h: isinstance(h.get("options"), dict), "an object"),
    ("held_out", lambda h: h.get("held_out") in HELD_OUT, f"one of {', '.join(HELD_OUT)}"),
    ("data", lambda h: isinstance(h.get("data"), dict) and all(
        h["data"].get(k) is None or _count(h["data"][k]) for k in ("train_images", "test_images", "train_of",
                                                                   "test_of")), "image counts (or null)"),
    ("normalization", lambda h: h.get("normalization") is None or (
        isinstance(h["normalization"], dict) and _number(h["normalization"].get("mean"))
        and _number(h["normalization"].get("std")) and h["normalization"]["std"] > 0),
     "a mean and a positive std"),
    ("tuned_seeds", lambda h: isinstance(h.get("tuned_seeds"), list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in h["tuned_seeds"]), "a list of seeds"),
    ("overrides", lambda h: h.get("overrides") is None or isinstance(h["overrides"], dict), "an object"),
    ("origin", lambda h: h.get("origin") is None or isinstance(h["origin"], dict), "an object"),
    ("model_source", lambda h: _file_record(h.get("model_source")), "a file, its origin and SHA-256"),
    ("journey_source", lambda h: _file_record(h.get("journey_source")), "a file, its origin and SHA-256"),
)
_SUMMARY_FIELDS = (
    ("params", lambda s: _count(s.get("params")), "a parameter count"),
    ("epochs", lambda s: _count(s.get("epochs")), "an epoch count"),
    ("best_test_acc", lambda s: _number(s.get("best_test_acc")), "a percentage"),
    ("last_test_acc", lambda s: _number(s.get("last_test_acc")), "a percentage"),
    ("verdict", lambda s: isinstance(s.get("verdict"), dict) and isinstance(s["verdict"].get("met"), bool),
     "an object saying whether the targets were met"),
    ("device", lambda s: isinstance(s.get("device"), str), "a device name"),
    ("torch", lambda s: isinstance(s.get("torch"), str), "a torch version"),
    ("wall_seconds", lambda s: _number(s.get("wall_seconds")), "a number of seconds"),
)


def _checked(obj: object, path: Path, tests: tuple) -> dict:
    """``obj`` (read from ``path``) when it has every field of ``tests``; else one sentence naming the file and
    the field: the one place a record's JSON is validated."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object; the run record is damaged.")
    for name, test, what in tests:
        if not test(obj):
            raise CheckpointError(f"{path}: the field {name!r} is {json.dumps(obj.get(name))[:60]}, not {what}; "
                                  f"the run record is damaged.")
    return obj


def _upgrade_summary(summary: dict) -> dict:
    model = summary.get("model")
    return {**summary, "model": current("model", model) if model else model}


_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _fits(value: object, hint: object) -> bool:
    """Whether a recorded ``value`` has the type a field's ``hint`` names (an int for a float too; never a bool
    for a number); a hint of another kind (a tuple, a dict) is left to the dataclass."""
    kinds = [k for k in typing.get_args(hint) or (hint,)]
    if value is None:
        return type(None) in kinds or not any(k in _KINDS for k in kinds)
    if isinstance(value, bool):
        return bool in kinds or not any(k in _KINDS for k in kinds)
    wanted = [k for k in kinds if k in _KINDS]
    return not wanted or isinstance(value, tuple(wanted)) or (float in wanted and isinstance(value, int))


def _from_dict(cls: type, d: dict) -> object:
    """A frozen dataclass from its recorded fields (fields this version does not know are left out), each of the
    type its field names: a record is data from anywhere, and a wrong type is one sentence naming the field."""
    if not isinstance(d, dict):
        raise CheckpointError(f"the recorded {cls.__name__.lower()} is not a JSON object; the record is damaged.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in d.items():
        if key in known and not _fits(value, hints[key]):
            kinds = " or ".join(_KINDS[k] for k in typing.get_args(hints[key]) or (hints[key],) if k in _KINDS)
            raise CheckpointError(f"the recorded {cls.__name__.lower()}'s {key} is {value!r}, not {kinds}; the "
                                  f"record is damaged.")
    try:
        return cls(**{k: v for k, v in d.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the recorded {cls.__name__.lower()} cannot be read ({e}).") from None
