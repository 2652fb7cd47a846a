"""What a report adds so that a student can hand it in: each step's layer table, per-epoch log and model code,
and an analysis that compares the step with the one before it (what changed, and what that did)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import statistics
from pathlib import Path

from tinymnist.models import create_model, family_model, is_user_model, split_user_model
from tinymnist.reports.render import epoch_table, layer_lines
from tinymnist.targets import LAST_K, TARGET, first_epoch_holding
from tinymnist.training.recipes import Recipe

LEARNED = 20.0  # percent test accuracy under which a model is said not to have learned (chance is 10%)


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


def changes(before: Recipe, after: Recipe, base: Path | None) -> list[str]:
    """What differs between two steps' recipes (the model included), as 'field: old -> new'."""
    out = []
    for field in dataclasses.fields(Recipe):
        a, b = getattr(before, field.name), getattr(after, field.name)
        if a != b and field.name != "seed":
            if field.name == "model":
                a, b = shown_model(a, base), shown_model(b, base)
            out.append(f"{field.name}: {a} -> {b}")
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
    what = "; ".join(changed) if changed else "nothing in the recipe or model (another seed only)"
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


def did_not_learn(metrics: list[dict]) -> str | None:
    """A sentence for a model that did not learn (final test accuracy under LEARNED percent), else None."""
    final = metrics[-1]["test_acc"]
    if final >= LEARNED:
        return None
    mean_train = statistics.fmean(m["train_acc"] for m in metrics)
    return (f"Did not learn: final test accuracy {final:.2f}% (chance is 10%; train accuracy averaged "
            f"{mean_train:.2f}%); fit and consistency are not judged until it does.")
