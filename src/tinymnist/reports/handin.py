"""What a report adds so that a student can hand it in: each step's layer table, per-epoch log and model code,
and an analysis that compares the step with the one before it (what changed, and what that did)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from pathlib import Path

from tinymnist.models import create_model, family_model, is_user_model, split_user_model
from tinymnist.reports.render import LEARNED, epoch_table, layer_lines
from tinymnist.targets import LAST_K, TARGET, first_epoch_holding
from tinymnist.training.recipes import Recipe


def shown_model(model: str, base: Path | None) -> str:
    """A model name as a report shows it: a user's file relative to ``base`` (the journey file's folder), never
    an absolute path of the student's machine."""
    if not is_user_model(model):
        return model
    path, attr, args = split_user_model(model)
    relative = os.path.relpath(path, base) if base else path.name
    return f"{relative}:{attr}" + (f"({args})" if args else "")


def layer_block(model: str, source: Path | None = None) -> list[str]:
    """The layer table (output shape, parameters, receptive field) as a text block."""
    return ["```text", *layer_lines(create_model(model, source)), "```"]


def log_block(metrics: list[dict]) -> list[str]:
    """The per-epoch log, folded on GitHub so that the report stays readable."""
    return ["<details><summary>Per-epoch log (accuracy in %, lr per batch at the epoch's end, seconds per "
            "epoch)</summary>", "", *epoch_table(metrics, markdown=True), "", "</details>"]


def _builtin_source(name: str) -> str:
    """A built-in model's factory and the functions of the zoo it calls, in the order they are needed."""
    from tinymnist.models import registry, zoo

    factory = registry._FAMILIES[family_model(name)[0]] if family_model(name) else registry._REGISTRY[
        registry.model_name(name)]
    seen, order = set(), []

    def visit(fn: object) -> None:
        if fn in seen:
            return
        seen.add(fn)
        for called in fn.__code__.co_names:
            other = getattr(zoo, called, None)
            if inspect.isfunction(other) and other.__module__ == zoo.__name__:
                visit(other)
        order.append(fn)

    visit(factory)
    return "\n\n\n".join(inspect.getsource(fn).rstrip() for fn in order)


def _user_source(path: Path, attr: str) -> str:
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == attr:
            return ast.get_source_segment(text, node) or text
    return text


def code_block(model: str, source: Path | None, out: Path) -> list[str]:
    """The model's code: a user's class or function from the file the run used (the whole file copied into
    ``out``/code/ and linked), or the built-in factory with the functions it calls."""
    if not is_user_model(model):
        return ["```python", _builtin_source(model), "```"]
    path, attr, _ = split_user_model(model)
    source = source or path
    (out / "code").mkdir(parents=True, exist_ok=True)
    (out / "code" / path.name).write_text(source.read_text())
    link = f"code/{path.name}"
    return ["```python", _user_source(source, attr), "```", "", f"The whole file: [{link}]({link})."]


def _figures(metrics: list[dict], last_k: int) -> dict:
    accs = [m["test_acc"] for m in metrics]
    tail = accs[-last_k:]
    return {"gap": round(metrics[-1]["train_acc"] - metrics[-1]["test_acc"], 2), "low": min(tail),
            "swing": max((abs(b - a) for a, b in zip(tail, tail[1:], strict=False)), default=0.0),
            "first": first_epoch_holding(accs), "final": accs[-1]}


def toml_value(value: object) -> str:
    """A setting as a journey file writes it: true / false, "text", 0.05."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def acting(recipe: Recipe) -> dict[str, object]:
    """The recipe's settings that change what it trains (seed aside): a schedule's own settings only with that
    schedule, Nesterov only with momentum, the distillation share only with a teacher."""
    settings = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(Recipe) if f.name not in ("seed",)}
    idle = {"step": ("warmup", "final_lr", "cycle_epochs"), "onecycle": ("step_size", "gamma"),
            "constant": ("step_size", "gamma", "warmup", "final_lr", "cycle_epochs")}[recipe.schedule]
    idle += () if recipe.optimizer == "sgd" and recipe.momentum > 0 else ("nesterov",)
    idle += () if recipe.teacher else ("distill",)
    return {k: v for k, v in settings.items() if k not in idle}


def changes(before: Recipe, after: Recipe, base: Path | None) -> list[str]:
    """What differs between two steps' recipes (the model included), as 'setting: old -> new' in the journey
    file's terms; only settings that act in the later step (step_size on a constant schedule changes nothing)."""
    old, new = acting(before), acting(after)
    out = []
    for key, b in new.items():
        a = old.get(key, getattr(before, key))
        if a == b:
            continue
        if key == "model":
            out.append(f"model: {shown_model(a, base)} -> {shown_model(b, base)}")
        else:
            name = "momentum (Adam's beta1)" if key == "momentum" and after.optimizer == "adam" else key
            out.append(f"{name}: {toml_value(a)} -> {toml_value(b)}")
    return out


def compare_lines(before: tuple[str, Recipe, list[dict], int], after: tuple[Recipe, list[dict], int],
                  base: Path | None, last_k: int = LAST_K) -> list[str]:
    """Sentences comparing a step with the one before it (``before``: its label, recipe, metrics and
    parameters): what changed, and what it did to the gap, the last-K minimum, the swing and the first epoch
    holding the target. Different numbers always read differently: every figure is in the sentence."""
    name, r0, m0, p0 = before
    r1, m1, p1 = after
    f0, f1 = _figures(m0, last_k), _figures(m1, last_k)
    changed = changes(r0, r1, base)
    what = "; ".join(changed) if changed else "no setting that acts, and not the model (another seed at most)"
    size = f"{p1:,} parameters ({p1 - p0:+,})" if p1 != p0 else f"the same {p1:,} parameters"
    lines = [f"Against step `{name}`: changed {what}; {size}."]
    if f1["final"] < LEARNED or f0["final"] < LEARNED:  # did_not_learn says so; its figures compare nothing
        return lines

    def moved(key: str, unit: str = " points") -> str:
        return f"{f0[key]:.2f} -> {f1[key]:.2f} ({f1[key] - f0[key]:+.2f}{unit})"

    first0, first1 = (str(f["first"]) if f["first"] else "never" for f in (f0, f1))
    k = min(last_k, len(m1))
    lines.append(f"Train-test gap at the last epoch {moved('gap')}; lowest test accuracy of the last {k} epochs "
                 f"{moved('low')}; largest epoch-to-epoch swing there {moved('swing')}; the first epoch from which "
                 f"every later one holds {TARGET}: {first0} -> {first1}.")
    better = f1["low"] - f0["low"]
    verdict = ("raised the level the last epochs hold" if better > 0.02 else
               "lowered the level the last epochs hold" if better < -0.02 else
               "left the level of the last epochs where it was (within 0.02 points)")
    lines.append(f"So the change {verdict}" + (", and the target is now held earlier" if f1["first"] and (
        not f0["first"] or f1["first"] < f0["first"]) else "") + ".")
    return lines
