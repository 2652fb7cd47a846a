"""Every table and sentence shown to a person: epoch rows, verdicts, the table over seeds, the measured
analysis, results.md. Plain functions of records and figures; nothing here trains, loads or prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from tinymnist.errors import counted, last_epochs
from tinymnist.runs.records import RunRecord
from tinymnist.targets import BONUS_PARAMS, LAST_K, MAX_PARAMS, TARGET, TARGET_ACC, holds_last_k

HEADER = f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} {'lr':>9} {'seconds':>7}"
COLUMNS = ("epoch", "train loss", "train acc", "test loss", "test acc", "lr", "seconds")


def epoch_row(m: dict, published: float | None = None) -> str:
    row = (f"{m['epoch']:>5} {m['train_loss']:>10.4f} {m['train_acc']:>8.2f}% {m['test_loss']:>9.4f} "
           f"{m['test_acc']:>7.2f}% {m['lr']:>9.2e} {m['seconds']:>7.1f}")
    return row + (f" {published:>8.2f}%" if published is not None else "")


def epoch_table(metrics: list[dict], published: tuple[float, ...] = (), markdown: bool = False) -> list[str]:
    """The per-epoch table; ``published`` adds the original's own figures as a last column."""
    def original(m: dict) -> float | None:
        return published[m["epoch"] - 1] if m["epoch"] <= len(published) else None

    if not markdown:
        return [HEADER + (f" {'original':>9}" if published else "")] + [epoch_row(m, original(m)) for m in metrics]
    head = "| " + " | ".join(COLUMNS) + " |" + (" original test acc |" if published else "")
    lines = [head, "|---" * (len(COLUMNS) + bool(published)) + "|"]
    for m in metrics:
        orig = f" {original(m):.2f} |" if original(m) is not None else ""
        lines.append(f"| {m['epoch']} | {m['train_loss']:.4f} | {m['train_acc']:.2f} | {m['test_loss']:.4f} | "
                     f"{m['test_acc']:.2f} | {m['lr']:.2e} | {m['seconds']:.1f} |" + orig)
    return lines


CSV_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


def csv_lines(metrics: list[dict]) -> list[str]:
    """The per-epoch metrics as CSV: accuracies in percent, lr per batch at the epoch's end, seconds of the epoch
    (training and evaluation); ``test_`` is the run's held-out split (``tinymnist show`` names it)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    return out.getvalue().splitlines()


def run_lines(run: RunRecord) -> list[str]:
    """What a run trained: its model and size, its images (a subset said so), the held-out split, precision."""
    recipe, options, header = run.recipe(), run.options(), run.header()
    train, test = run.data_sizes()
    held_out = header.get("held_out", "test")
    summary = run.summary() if run.finished() else {}
    params = f"{summary['params']:,} params, " if "params" in summary else ""
    images = f"the first {train:,} training images (a subset)" if train else "every training image"
    tested = f"{test:,} {held_out} images" if test else f"the whole {held_out} split"
    return [f"{run.step()}: model {recipe.model} ({params}{counted(recipe.epochs, 'epoch')}, seed {recipe.seed})",
            f"trained on {images}, scored on {tested}; {summary.get('precision', options.precision)}, "
            + (counted(options.threads, "thread") if options.threads else "one thread per core")]


def recipe_line(r: object) -> str:
    """A recipe in one line: epochs, batch, optimizer, schedule, augmentation (a Recipe); only settings that act
    (no Nesterov without momentum; Adam's beta1 by its name)."""
    cycle_end = f"by epoch {r.cycle_epochs}, then held" if r.cycle_epochs else "at the end"
    schedule = {"constant": "constant LR", "step": f"StepLR({r.step_size}, gamma {r.gamma}) per epoch",
                "onecycle": f"one-cycle (warm-up {r.warmup:.0%} of the cycle, down to {r.final_lr:g} x peak "
                            f"{cycle_end})"}[r.schedule]
    augmentation = (f"rotate ±{r.rotate:g}°, shift ±{r.shift:g}, scale ±{r.scale:g}"
                    + (f", elastic alpha {r.elastic:g} px" if r.elastic else "")
                    if r.augmented else "none")
    ema = f"; weight average (decay {r.ema:g} per batch)" if r.ema else ""
    ema += f"; distilled from {r.teacher} (share {r.distill:g})" if r.teacher else ""
    moment = (f"beta1 {r.momentum:g}" if r.optimizer == "adam" else
              f"momentum {r.momentum:g}{' (Nesterov)' if r.nesterov and r.momentum > 0 else ''}")
    return (f"{counted(r.epochs, 'epoch')}, batch {r.batch_size}, {r.optimizer.upper()} lr {r.lr:g}, {moment}, "
            f"weight decay {r.weight_decay:g}, {schedule}; augmentation: {augmentation}{ema}")


def model_line(model: object) -> str:
    """A model in one line: parameters, receptive field, inference MFLOPs per image (an nn.Module)."""
    from tinymnist.models import count_params
    from tinymnist.models.layers import final_rf_text, flops_per_image, layer_table

    rf = final_rf_text(layer_table(model))
    return (f"{count_params(model):,} params, receptive field {rf}, {flops_per_image(model) / 1e6:.2f} "
            f"MFLOPs per image")


def verdict_lines(summary: dict) -> list[str]:
    lines = [f"{'met ' if c['met'] else 'MISS'}  {c['name']}: {c['measured']}" for c in summary["verdict"]["checks"]]
    first = summary["first_epoch_holding"]
    lines.append(f"first epoch from which every later epoch holds {TARGET}: {first if first else 'none'}")
    lines.append("all targets met" if summary["verdict"]["met"] else "targets NOT met")
    return lines


def seed_list(seeds: Iterable[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    seeds = sorted(seeds)
    parts, start = [], None
    for i, s in enumerate(seeds):
        start = s if start is None else start
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(str(s) if s == start else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def pass_count(figures: dict) -> str:
    """'9 of 10 (95% interval 55-100%)': the interval widened to whole percent, never narrowed by rounding."""
    lower, upper = figures["pass_interval"]
    return (f"{figures['seeds_passing']} of {figures['seeds_run']} (95% interval {math.floor(100 * lower + 1e-9)}-"
            f"{math.ceil(100 * upper - 1e-9)}%)")


def over_seeds_lines(figures: dict, tuned: Iterable[int] = ()) -> list[str]:
    """The consistency table: a row per seed, then the pass count with its interval and the accuracy figures."""
    k, tuned = figures["last_k"], set(tuned)
    lines = [f"{'seed':>6}  {'test acc, last ' + counted(k, 'epoch'):<44} {'min':>6}  passed"]
    for s in figures["seeds"]:
        accs = " ".join(f"{a:.2f}" for a in s[f"last_{k}"])
        mark = "  (tuning seed)" if s["seed"] in tuned else ""
        lines.append(f"{s['seed']:>6}  {accs:<44} {s['min']:>6.2f}  {'yes' if s['passed'] else 'NO'}{mark}")
    seeds = [s["seed"] for s in figures["seeds"]]
    used = sorted(tuned & set(seeds))
    lines += [f"seeds passing (>= {TARGET} in {last_epochs(k)}): {pass_count(figures)}, "
              "Clopper-Pearson",
              f"final test accuracy: {figures['final_mean']:.2f} +- {figures['final_std']:.2f}% (mean +- std)",
              f"minimum over the last {counted(k, 'epoch')} of every seed: {figures['min_last_k']:.2f}%"]
    if used:
        lines.append(f"{'seeds' if len(used) > 1 else 'seed'} {seed_list(used)} {'were' if len(used) > 1 else 'was'} "
                     f"used to tune this recipe: on {'them' if len(used) > 1 else 'it'} a pass proves the choice, not "
                     f"the recipe.")
    return lines


def layer_lines(model: object) -> list[str]:
    """The per-layer table of any nn.Module: output shape, parameters, receptive field, jump; then the totals."""
    from tinymnist.models import count_params
    from tinymnist.models.layers import final_rf_text, flops_per_image, layer_table

    rows = layer_table(model)
    width = max([26, *(len(row.name) for row in rows)])  # a repeated layer's "(again)" makes a longer name
    lines = [f"{'layer':<{width}} {'output':>12} {'params':>7} {'RF':>4} {'jump':>5}"]
    for row in rows:
        shape = "x".join(str(d) for d in row.shape)
        lines.append(f"{row.name:<{width}} {shape:>12} {row.params:>7,} {row.rf_text:>4} {row.jump_text:>5}")
    lines.append(f"total: {count_params(model):,} params, {flops_per_image(model) / 1e6:.2f} MFLOPs per image "
                 f"(inference), final receptive field {final_rf_text(rows)}")
    return lines


# --- the analysis a report writes under each step ------------------------------------------------------

GAP_MARGIN = 0.50  # points between train and test accuracy before a gap is called over- or underfitting
LEARNED = 20.0  # percent test accuracy under which a model is said not to have learned (chance is 10%)


def did_not_learn(metrics: list[dict]) -> str | None:
    """A sentence for a model that did not learn (final test accuracy under LEARNED percent), else None."""
    final = metrics[-1]["test_acc"]
    if final >= LEARNED:
        return None
    mean_train = statistics.fmean(m["train_acc"] for m in metrics)
    return (f"Did not learn: final test accuracy {final:.2f}%, near chance (10%), and train accuracy averaged "
            f"{mean_train:.2f}%; fit and consistency are not judged until it learns (a learning rate too high or "
            f"too low, or too few epochs, are the usual causes).")


def md(text: str) -> str:
    """Text for a markdown table cell: a `|` escaped, lines joined."""
    return " ".join(text.split("\n")).replace("|", "\\|")


def fit_sentence(histories: list[list[dict]]) -> str:
    """The word the numbers earn: underfits when test leads train by GAP_MARGIN or more, overfits when train leads
    test by as much and by more than the training error itself (64% train is no overfitting), underfits when
    train accuracy itself is under the target, else fits. The gap
    is rounded to the two decimals it is shown with before it is judged: the same shown gap, the same word."""
    train = statistics.fmean(h[-1]["train_acc"] for h in histories)
    test = statistics.fmean(h[-1]["test_acc"] for h in histories)
    gap = round(train - test, 2)
    measured = f"final train accuracy {train:.2f}%, test {test:.2f}% (gap {gap:+.2f} points)"
    if gap <= -GAP_MARGIN:
        return (f"Underfits: {measured}: test leads train by at least {GAP_MARGIN:.2f} points (train accuracy is "
                f"measured during training, in train mode: with dropout active and on augmented batches where the "
                f"recipe augments), so the model has room to learn more.")
    if gap >= GAP_MARGIN and (gap >= round(100 - train, 2) or round(train, 2) >= TARGET_ACC):
        return f"Overfits: {measured}: train leads test by at least {GAP_MARGIN:.2f} points."
    if round(train, 2) < TARGET_ACC:
        return (f"Underfits: {measured}: the model does not reach {TARGET} even on its training images, so it "
                f"needs more capacity or more training.")
    return f"Fits: {measured}: train and test within ±{GAP_MARGIN:.2f} points."


def settling_sentence(histories: list[list[dict]], last_k: int = LAST_K) -> str | None:
    """'Settling' when test accuracy still climbs to its best at the last epoch (first seed), else None."""
    accs = [m["test_acc"] for m in histories[0][-last_k:]]
    if len(accs) < 2 or accs[-1] < max(accs) or accs[-1] - accs[0] < 0.10:
        return None
    return (f"Settling: test accuracy still rose over the last {len(accs)} epochs ({accs[0]:.2f}% -> "
            f"{accs[-1]:.2f}%), best at the last: more epochs may take it higher.")


def analyse(histories: list[list[dict]], params: int, last_k: int = LAST_K) -> list[str]:
    """Sentences on fit (fit_sentence, then settling when it applies), consistency (last-K epochs, swings) and
    size (the limits)."""
    fit = fit_sentence(histories)
    settling = settling_sentence(histories, last_k)
    tails = [[m["test_acc"] for m in h[-last_k:]] for h in histories]
    swing = max(max(abs(b - a) for a, b in zip(t, t[1:], strict=False)) if len(t) > 1 else 0.0 for t in tails)
    passing = sum(holds_last_k([m["test_acc"] for m in h], last_k) for h in histories)
    low = min(min(t) for t in tails)
    of = f" in {passing} of {len(tails)} seeds" if len(tails) > 1 else ""
    spread = f"(lowest {low:.2f}%, largest epoch-to-epoch swing {swing:.2f} points)"
    if min(len(h) for h in histories) < last_k:
        consistency = (f"Consistency not judged: {counted(min(len(h) for h in histories), 'epoch')} ran, fewer "
                       f"than the last {last_k} the target reads {spread}.")
    elif passing == len(tails):
        consistency = f"Consistent: test accuracy holds {TARGET} in {last_epochs(last_k)}{of} {spread}."
    elif len(tails) > 1:
        consistency = f"Not consistent: test accuracy holds {TARGET} in {last_epochs(last_k)}{of} {spread}."
    else:
        consistency = (f"Not consistent: test accuracy falls below {TARGET} in the last {counted(last_k, 'epoch')} "
                       f"{spread}.")
    if params < BONUS_PARAMS:
        size = f"Size: {params:,} parameters, under both the {MAX_PARAMS:,} limit and the {BONUS_PARAMS:,} bonus."
    elif params < MAX_PARAMS:
        size = (f"Size: {params:,} parameters, under {MAX_PARAMS:,} but {params - BONUS_PARAMS + 1:,} too many for "
                f"the bonus.")
    else:
        size = f"Size: {params:,} parameters, {params - MAX_PARAMS + 1:,} over the {MAX_PARAMS:,} limit."
    return [fit, *([settling] if settling else []), consistency, size]


def trial_line(trial) -> str:  # an optuna FrozenTrial
    """One line for a finished trial of a search."""
    attrs = trial.user_attrs
    params = f"{attrs['params']:>6,} params" if "params" in attrs else " " * 13
    if attrs.get("over_budget"):
        what = "over the parameter budget, not trained"
    elif attrs.get("diverged"):
        what = "diverged: " + attrs["diverged"].split(";")[0]
    elif trial.state.name == "COMPLETE":
        last = (f"last epochs: level {attrs['level']:.2f}%, worst {attrs['worst']:.2f}%" if "level" in attrs
                else f"worst of last epochs {trial.value:.2f}%")
        seed = f", seed {attrs['seed']}" if attrs.get("rescore_of") is not None else ""
        what = f"{last} (validation{seed}), {attrs.get('seconds', 0):.0f} s"
    else:
        accs = attrs.get("val_acc", [])
        what = f"after epoch {len(accs)}: {accs[-1]:.2f}%" if accs else ""
    return f"trial {trial.number:>3} {trial.state.name.lower():<8} {params}  {what}  {attrs.get('model', '')}"
