"""Figures (matplotlib's object API: Figure objects saved through the Agg canvas, so importing this module
never touches pyplot's global backend, and a notebook's inline plots keep working) and report.md, from run
records."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from tinymnist.data import MNIST
from tinymnist.errors import counted
from tinymnist.models import is_user_model
from tinymnist.reports.check import data_line, model_code_change
from tinymnist.reports.handin import code_block, compare_lines, layer_block, log_block, shown_model
from tinymnist.reports.render import analyse, did_not_learn, md, over_seeds_lines, pass_count, recipe_line, seed_list
from tinymnist.runs.records import RunRecord
from tinymnist.targets import LAST_K, TARGET, TARGET_ACC, first_epoch_holding, judge, over_seeds
from tinymnist.training.recipes import Options, Recipe, RunSpec, Step


def digit_grid(images: torch.Tensor | np.ndarray, captions: list[str] | list[int], path: Path, title: str,
               columns: int = 10) -> None:
    """A grid of uint8 (N, 28, 28) digits, each captioned."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(max(columns * 1.1, 5.0), rows * 1.3 + 0.6))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(np.asarray(images[i]), cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(str(captions[i]), fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --- figures -------------------------------------------------------------------------------------------

def curves(history: list[dict], path: Path, title: str) -> None:
    _save(curves_figure(history, title), path)


def curves_figure(history: list[dict], title: str) -> Figure:
    """Loss and accuracy per epoch, train and test, every epoch; a third panel zooms on the target line (a
    notebook shows the Figure)."""
    epochs = [m["epoch"] for m in history]
    fig = Figure(figsize=(15, 4))
    loss_ax, acc_ax, zoom_ax = fig.subplots(1, 3)
    loss_ax.plot(epochs, [m["train_loss"] for m in history], "o-", label="train")
    loss_ax.plot(epochs, [m["test_loss"] for m in history], "o-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="loss (NLL)", title="loss", yscale="log")
    for ax in (acc_ax, zoom_ax):
        ax.plot(epochs, [m["train_acc"] for m in history], "o-", label="train")
        ax.plot(epochs, [m["test_acc"] for m in history], "o-", label="test")
        ax.axhline(TARGET_ACC, color="gray", linestyle="--", label=f"{TARGET} target")
    low = min(min(m["test_acc"], m["train_acc"]) for m in history)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (every epoch)",
               ylim=(max(0.0, low - 0.5), 100.2))
    zoom_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="near the target", ylim=(TARGET_ACC - 1, 100))
    for ax in (loss_ax, acc_ax, zoom_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        whole_epochs(ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def compare_curves(named: dict[str, list[dict]], path: Path, title: str) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for name, history in named.items():
        ax.plot([m["epoch"] for m in history], [m["test_acc"] for m in history], "o-", label=name)
    ax.axhline(TARGET_ACC, color="gray", linestyle="--", label=f"{TARGET} target")
    low = min(m["test_acc"] for history in named.values() for m in history)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title, ylim=(max(0.0, low - 0.5), 100.2))
    ax.grid(alpha=0.3)
    ax.legend()
    whole_epochs(ax)
    _save(fig, path)


def whole_epochs(ax: object) -> None:
    """Ticks on whole epochs only (matplotlib would put them at 1.5, 2.5 on a short run)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def confusion(labels: torch.Tensor, predicted: torch.Tensor, path: Path, title: str) -> None:
    matrix = torch.zeros(10, 10, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    off = matrix.clone().fill_diagonal_(0)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    image = ax.imshow(off.numpy(), cmap="Reds")
    for t in range(10):
        for p in range(10):
            if matrix[t, p]:
                ax.text(p, t, str(int(matrix[t, p])), ha="center", va="center", fontsize=7,
                        color="gray" if t == p else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10),
           title=f"{title}\n(colour: errors only; diagonal in gray)")
    fig.colorbar(image, ax=ax, label="misclassified test images")
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --- which run a report may reuse ----------------------------------------------------------------------

def same_run(record: RunRecord, spec: RunSpec, data: MNIST, asking: str = "this report") -> list[str]:
    """What differs between the run in ``record`` and the one ``spec`` would train on ``data``, in words (empty:
    the same run, to reuse): the model (a user's by its code: another class of the same file may change), each
    recipe setting, the images trained and scored on. The one seam where the run record's own identity (model
    hash, recipe, data subset, options) takes over once it records one."""
    header, was, now = record.header(), record.recipe(), spec.recipe
    out = []
    if is_user_model(was.model) and is_user_model(now.model) and shown_model(was.model, None) == shown_model(
            now.model, None):
        if (why := model_code_change(now.model, header, record.path)) is not None:
            out.append(why)
    elif was.model != now.model:
        out.append(f"model changed: {shown_model(was.model, None)} -> {shown_model(now.model, None)}")
    changed = [f.name for f in dataclasses.fields(Recipe) if f.name != "model"
               and getattr(was, f.name) != getattr(now, f.name)]
    if changed:
        out.append(f"recipe changed: {', '.join(changed)}")
    had_options = record.options()  # an option asked as "auto" (or None) is whatever the run resolved it to
    options = [f.name for f in dataclasses.fields(Options) if getattr(spec.options, f.name) not in ("auto", None)
               and getattr(spec.options, f.name) != getattr(had_options, f.name)]
    if options:
        out.append(f"options changed: {', '.join(options)}")
    (train, test), full = record.data_sizes(), data.full_sizes
    had = (train or full[0], test or full[1])
    wants = (spec.train_images or len(data.train_labels), spec.held_out_images or len(data.held_out_labels))
    if had[0] != wants[0]:
        out.append(f"trained on {had[0]:,} images, {asking} uses {wants[0]:,}")
    if had[1] != wants[1]:
        out.append(f"scored on {had[1]:,} test images, {asking} uses {wants[1]:,}")
    return out


# --- the report ----------------------------------------------------------------------------------------

def _stat(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def step_rows(histories: list[list[dict]], params: int, last_k: int = LAST_K) -> dict[str, str]:
    """The summary-table cells of one step over its seeds."""
    firsts = [first_epoch_holding([m["test_acc"] for m in h]) for h in histories]
    held = [f for f in firsts if f is not None]
    verdicts = [judge(params, [m["test_acc"] for m in h], last_k) for h in histories]
    met = sum(v.met for v in verdicts)
    short = min(len(h) for h in histories) < last_k
    return {
        "params": f"{params:,}",
        "best_train": _stat([max(m["train_acc"] for m in h) for h in histories]),
        "best_test": _stat([max(m["test_acc"] for m in h) for h in histories]),
        "min_last": _stat([min(m["test_acc"] for m in h[-last_k:]) for h in histories]),
        "first_holding": (", ".join(str(f) if f else "none" for f in firsts) if len(firsts) > 1
                          else (str(held[0]) if held else "none")),
        "met": (f"not judged ({counted(min(len(h) for h in histories), 'epoch')}, fewer than the last {last_k})"
                if short else
                ("yes" if met else "no") if len(verdicts) == 1 else f"{met} of {len(verdicts)} seeds"),
    }


def _tuning_note(steps: tuple[Step, ...], runs: dict[str, list[RunRecord]]) -> list[str]:
    """Say which of the report's seeds chose the recipes: a pass on them proves the choice, not the recipe."""
    used = sorted({run.recipe().seed for step in steps for run in runs[step.name] if run.recipe().seed in
                   step.tuned_seeds})
    if not used:
        return []
    return [f"Seed{'s' * (len(used) > 1)} {seed_list(used)} {'were' if len(used) > 1 else 'was'} looked at while "
            f"these recipes were chosen: a pass there proves the choice, not the recipe. A claim that a step holds "
            f"rests on its fresh seeds, shown after its analysis where they were run (and in docs/results.md).", ""]


def _label(step: Step) -> str:
    """A step's name as a report shows it (a user's journey step without its RUNS/user/JOURNEY prefix)."""
    return step.name.rsplit("/", 1)[-1]


def scored(run: RunRecord, data: MNIST) -> str:
    test = run.data_sizes()[1]
    return f"{test:,} of {data.full_sizes[1]:,}" if test else f"all {data.full_sizes[1]:,}"


def _how(said: list[str], runs: list[RunRecord]) -> str:
    """What became of each seed's run: 'reused' for one seed, 'seed 1 reused; seed 2 trained' for several."""
    if len(said) == 1:
        return said[0]
    return "; ".join(f"seed {run.recipe().seed} {h}" for run, h in zip(runs, said, strict=True))


def _weight_figures(label: str, data: MNIST, figures: Path,
                    predictions: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """The confusion matrix and the most confident mistakes, from a run's (confidence, predicted digit) per test
    image (``predictions``; None: the run kept no weights, like the records committed under evidence/, and
    this folder keeps the two figures it already has from it). False when there are none to show."""
    paths = figures / f"{label}-misclassified.png", figures / f"{label}-confusion.png"
    if predictions is None:
        return all(p.is_file() for p in paths)
    confidence, predicted = predictions
    wrong = (predicted != data.held_out_labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:40]
    captions = [f"{int(data.held_out_labels[j])}→{int(predicted[j])} {100 * float(confidence[j]):.0f}%" for j in wrong]
    digit_grid(data.held_out_images[wrong], captions, paths[0],
               f"{label}: the {len(wrong)} most confident mistakes (true→predicted, confidence)")
    confusion(data.held_out_labels, predicted, paths[1], f"{label}: confusion matrix")
    return True


def write_report(title: str, steps: tuple[Step, ...], runs: dict[str, list[RunRecord]], data: MNIST, out: Path,
                 command: str, last_k: int = LAST_K, fresh: dict[str, list[RunRecord]] | None = None,
                 trust: bool = False, base: Path | None = None,
                 predictions: dict[str, tuple[torch.Tensor, torch.Tensor] | None] | None = None,
                 how: dict[str, list[str]] | None = None, analyses: dict[str, str | None] | None = None,
                 quick: int | None = None) -> Path:
    """report.md and figures for a journey whose runs are finished: ``runs[step.name]`` lists one run per seed;
    ``fresh[step.name]``, when given, the step's finished runs on seeds it was not tuned on (its confirmation);
    ``base``, the journey file's folder, that a user's model files are shown relative to; ``predictions[step.name]``
    the first run's (confidence, predicted digit) per test image, for the figures that need its weights (the
    caller evaluates: a report trains and evaluates nothing); ``how[step.name]`` what became of each seed's run
    (reused, trained, retrained and why); ``analyses[step.name]`` the author's own analysis, which is the step's
    Analysis, the measured comparison under it; ``quick``: the epochs of a quick pass (every step's recipe cut
    to them), said at the top."""
    histories = {s.name: [r.metrics() for r in runs[s.name]] for s in steps}
    params = {s.name: runs[s.name][0].summary()["params"] for s in steps}
    lines = _summary_lines(title, steps, runs, command, last_k, quick, histories, params, out / "figures")
    for i, step in enumerate(steps, 1):
        lines += _step_lines(i, step, steps, runs, histories, params, data, out, last_k, fresh, trust, base,
                             predictions, how, analyses)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def _summary_lines(title: str, steps: tuple[Step, ...], runs: dict[str, list[RunRecord]], command: str,
                   last_k: int, quick: int | None, histories: dict[str, list[list[dict]]], params: dict[str, int],
                   figures: Path) -> list[str]:
    """The top of report.md: what it is, the table of every step and the figure of their test accuracies."""
    seeds = len(next(iter(runs.values())))
    quick_note = [f"**A quick pass**: every step trained {quick} epoch{'s' * (quick != 1)} instead of its recipe's "
                  f"own: a look at the journey, not its result.", ""] if quick else []
    lines = [f"# {title}: {len(steps)} steps", "",
             f"Generated by `{command}` from the run records; nothing here is typed by hand.",
             f"{'Figures are from the first seed; table' if seeds > 1 else 'Table'} figures are "
             f"{'mean ± std over ' + str(seeds) + ' seeds' if seeds > 1 else 'from one seed'}.", "",
             *quick_note, *_tuning_note(steps, runs),
             f"| Step | Target | Params | Best train acc | Best test acc | Min test acc, last {last_k} epochs | "
             f"First epoch holding {TARGET} | Targets met |", "|---|---|---|---|---|---|---|---|"]
    for i, step in enumerate(steps, 1):
        c = step_rows(histories[step.name], params[step.name], last_k)
        lines.append(f"| {i}. `{_label(step)}` | {md(step.target)} | {c['params']} | {c['best_train']} | "
                     f"{c['best_test']} | {c['min_last']} | {c['first_holding']} | {c['met']} |")
    compare_curves({_label(s): histories[s.name][0] for s in steps}, figures / "test-accuracy.png",
                   f"{title}: test accuracy per epoch (first seed)")
    lines += ["", "![test accuracy of the four steps](figures/test-accuracy.png)", ""]
    return lines


def _step_lines(i: int, step: Step, steps: tuple[Step, ...], runs: dict[str, list[RunRecord]],
                histories: dict[str, list[list[dict]]], params: dict[str, int], data: MNIST, out: Path, last_k: int,
                fresh: dict[str, list[RunRecord]] | None, trust: bool, base: Path | None,
                predictions: dict[str, tuple[torch.Tensor, torch.Tensor] | None] | None,
                how: dict[str, list[str]] | None, analyses: dict[str, str | None] | None) -> list[str]:
    """One step's section: its results, layers, log and code, the analysis, its confirmation, notes and figures."""
    figures = out / "figures"
    run = runs[step.name][0]
    r, summary = run.recipe(), run.summary()
    name, label = step.name, _label(step)
    curves(histories[name][0], figures / f"{label}-curves.png", f"{label}: loss and accuracy (seed {r.seed})")
    kept = _weight_figures(label, data, figures, (predictions or {}).get(name))
    c = step_rows(histories[name], params[name], last_k)
    lines = [f"## Step {i}: `{label}`", "", f"**Target.** {step.target}", "", "**Results.**", "",
             f"- Params: {c['params']}; model `{shown_model(r.model, base)}`",
             f"- Recipe: {recipe_line(r)}",
             f"- Best train accuracy: {c['best_train']}%; best test accuracy: {c['best_test']}%",
             f"- Lowest test accuracy over the last {last_k} epochs: {c['min_last']}%; first epoch from which "
             f"every later one holds {TARGET}: {c['first_holding']}",
             f"- Targets met: {c['met']}; trained on {summary['device']} ({summary.get('precision', 'fp32')}), "
             f"{summary['wall_seconds']:.0f} s wall for seed {r.seed}",
             f"- Data: {data_line(run.header(), data.full_sizes[0])}, scored on {scored(run, data)} test images",
             *([f"- Run: {_how(how[name], runs[name])}"] if how and name in how else []), "",
             "Layers (output shape, parameters, receptive field):", "",
             *layer_block(r.model, run.model_source(trust)), "", *log_block(histories[name][0]), "",
             "Model code:", "", *code_block(r.model, run.model_source(trust), out), ""]
    lines += _analysis_lines(i, step, steps, runs, histories, params, r, base, last_k, analyses, fresh)
    if step.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in step.notes]
    lines += ["", f"![curves](figures/{label}-curves.png)", ""]
    if kept:
        lines += [f"![misclassified](figures/{label}-misclassified.png)", "",
                  f"![confusion](figures/{label}-confusion.png)", ""]
    else:
        lines += ["(The run kept no weights, so there are no confusion matrix and misclassified digits here: "
                  "train the step again to draw them.)", ""]
    return lines


def _analysis_lines(i: int, step: Step, steps: tuple[Step, ...], runs: dict[str, list[RunRecord]],
                    histories: dict[str, list[list[dict]]], params: dict[str, int], r: Recipe, base: Path | None,
                    last_k: int, analyses: dict[str, str | None] | None,
                    fresh: dict[str, list[RunRecord]] | None) -> list[str]:
    """A step's analysis (the author's, or generated), the measured comparison with the step before and its
    confirmation on fresh seeds."""
    name = step.name
    own = (analyses or {}).get(name)
    lines = (["**Analysis** (the author's).", "", own, "", "**Measured** (generated from the run records).", ""]
             if own else ["**Analysis** (generated from the measurements).", ""])
    sentences = analyse(histories[name], params[name], last_k)
    if (failed := did_not_learn(histories[name][0])) is not None:
        sentences = [failed, sentences[-1]]  # fit and consistency mean nothing yet; the size still does
    if i > 1:
        before = steps[i - 2]
        sentences += compare_lines((_label(before), runs[before.name][0].recipe(), histories[before.name][0],
                                    params[before.name]), (r, histories[name][0], params[name]), base, last_k)
    lines += [f"- {sentence}" for sentence in sentences]
    confirmed = (fresh or {}).get(name)
    if confirmed:
        seeds = [run.recipe().seed for run in confirmed]
        confirmation = over_seeds(seeds, [run.metrics() for run in confirmed], params[name], last_k)
        lines += ["", f"**Confirmation on fresh seeds** (seeds {seed_list(seeds)}, none used to choose this "
                      f"recipe): passes on {pass_count(confirmation)}.", "", "```text",
                  *over_seeds_lines(confirmation), "```"]
    return lines
