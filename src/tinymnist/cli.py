"""Command line: argparse subcommands, each a few lines calling the library. ``main(argv)`` returns the exit
code: 0 ok, 1 targets missed (when asked to require them), 2 bad input, 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .data import load_mnist
from .engine import Options, pick_device
from .errors import TinyMnistError, UsageError
from .models import count_params, create_model, list_models
from .recipes import JOURNEYS, all_steps, get_recipe
from .runs import RunDir, train_run
from .targets import LAST_K

EXIT_OK, EXIT_TARGETS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one sentence and status 2
        raise UsageError(f"{message} (see {self.prog} --help).")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


# --- progress and tables ---------------------------------------------------------------------------

class Progress:
    """A tqdm bar per epoch on a terminal; nothing between the per-epoch rows otherwise."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.enabled = sys.stderr.isatty()

    def batch(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, leave=False, unit="batch", dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


HEADER = f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} {'lr':>9} {'seconds':>7}"


def epoch_row(m: dict, published: float | None = None) -> str:
    row = (f"{m['epoch']:>5} {m['train_loss']:>10.4f} {m['train_acc']:>8.2f}% {m['test_loss']:>9.4f} "
           f"{m['test_acc']:>7.2f}% {m['lr']:>9.2e} {m['seconds']:>7.1f}")
    return row + (f" {published:>8.2f}%" if published is not None else "")


def verdict_lines(summary: dict) -> list[str]:
    lines = [f"{'met ' if t['met'] else 'MISS'}  {t['name']}: {t['measured']}" for t in summary["verdict"]["targets"]]
    first = summary["first_epoch_holding"]
    lines.append(f"first epoch from which every later epoch holds 99.40%: {first if first else 'none'}")
    lines.append("all targets met" if summary["verdict"]["met"] else "targets NOT met")
    return lines


# --- subcommands ---------------------------------------------------------------------------------

def cmd_data(args: argparse.Namespace) -> int:
    from .report import digit_grid  # matplotlib only when a figure is asked for

    data = load_mnist(args.data_dir, not args.no_download)
    say(f"files found in {data.source.resolve()}",
        f"train: {len(data.train_labels):,} images   test: {len(data.test_labels):,} images")
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        counts = labels.bincount(minlength=10).tolist()
        say(f"{split} per class: " + "  ".join(f"{d}:{c:,}" for d, c in enumerate(counts)))
    say(f"normalization (from the training images): mean {data.mean:.4f}, std {data.std:.4f}")
    for split, images in (("train", data.train_images), ("test", data.test_images)):
        raw = images.float() / 255
        norm = data.normalize(images)
        say(f"{split} pixels in [0,1]:  mean {raw.mean():.4f} std {raw.std():.4f} min {raw.min():.4f} "
            f"max {raw.max():.4f}",
            f"{split} normalized:       mean {norm.mean():.4f} std {norm.std():.4f} min {norm.min():.4f} "
            f"max {norm.max():.4f}")
    out = Path(args.out)
    digit_grid(data.train_images[:60], data.train_labels[:60].tolist(), out, "MNIST: the first 60 training digits")
    say(f"wrote {out} (60 training digits with their labels)")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    say(f"{'model':<18} {'params':>7}")
    for name in list_models():
        say(f"{name:<18} {count_params(create_model(name)):>7,}")
    return EXIT_OK


def cmd_steps(args: argparse.Namespace) -> int:
    for journey, steps in JOURNEYS.items():
        say(f"journey {journey}:")
        for i, step in enumerate(steps, 1):
            params = count_params(create_model(step.recipe.model))
            say(f"  {i}. {step.name} ({params:,} params, {step.recipe.epochs} epochs): {step.target}")
    from .recipes import EXTRA
    if EXTRA:
        say("other recipes:")
        for name, recipe in EXTRA.items():
            say(f"  {name} ({count_params(create_model(recipe.model)):,} params, {recipe.epochs} epochs)")
    return EXIT_OK


def run_options(args: argparse.Namespace) -> Options:
    return Options(device=args.device, channels_last=not args.no_channels_last, precision=args.precision,
                   threads=args.threads)


def recipe_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                              "seed": getattr(args, "seed", None)}.items() if v is not None}


def load_data(args: argparse.Namespace, subset: int | None = None):  # noqa: ANN201
    data = load_mnist(args.data_dir, not args.no_download)
    return data.subset(subset) if subset else data


def train_and_show(run: RunDir, data, options: Options, published: tuple[float, ...] = ()) -> dict:  # noqa: ANN001
    progress = Progress()
    header = HEADER + (f" {'original':>9}" if published else "")
    say(f"run directory: {run.path}", header)

    def on_epoch(m: dict) -> None:
        progress.close()
        e = m["epoch"]
        say(epoch_row(m, published[e - 1] if published and e <= len(published) else None))

    try:
        return train_run(run, data, options, on_epoch, progress.batch)
    finally:
        progress.close()


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run = RunDir(args.resume)
        if not run.exists():
            raise UsageError(f"{run.path} is not a run directory (no recipe.json); give the directory a train "
                             f"command wrote.")
        if run.finished():
            raise UsageError(f"{run.path} is already finished; see {run.path / 'summary.json'}.")
        record = run.record()
        step, subset = record.get("step", ""), record.get("options", {}).get("subset")
        data = load_data(args, subset)
        known = Options.__dataclass_fields__
        options = Options(**{k: v for k, v in record.get("options", {}).items() if k in known})
    else:
        if not args.step:
            raise UsageError("name a step to train (see `tinymnist steps`), or --resume RUN_DIR.")
        step, subset = args.step, args.subset
        recipe = get_recipe(step).with_overrides(**recipe_overrides(args))
        data = load_data(args, args.subset)
        recipe.check(train_size=len(data.train_labels))
        options = run_options(args)
        pick_device(options.device)  # a bad --device fails before anything is written
        run = RunDir(Path(args.out) / f"{step}-seed{recipe.seed}")
        run.create(step, recipe, recipe_overrides(args),
                   {**options.__dict__, "subset": args.subset})
    recipe = run.recipe()
    original = all_steps().get(step)
    published = original.published if original and original.recipe == recipe and not subset else ()
    try:
        summary = train_and_show(run, data, options, published)
    except KeyboardInterrupt:
        say("", f"interrupted; {run.path} holds every completed epoch. Resume with: "
                f"tinymnist train --resume {run.path}")
        return EXIT_INTERRUPTED
    say("", *verdict_lines(summary))
    return EXIT_TARGETS if args.require_targets and not summary["verdict"]["met"] else EXIT_OK


def parse_seeds(args: argparse.Namespace, first: int) -> list[int]:
    if args.seed_list:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seed-list {args.seed_list!r} must be whole numbers separated by commas.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seed-list {args.seed_list!r} must name at least one seed, each once.")
        return seeds
    return [first + i for i in range(args.seeds)]


def consistency_lines(result: dict) -> list[str]:
    k = result["last_k"]
    lines = [f"{'seed':>6}  {f'test acc, last {k} epochs':<44} {'min':>6}  passed"]
    for s in result["seeds"]:
        accs = " ".join(f"{a:.2f}" for a in s[f"last_{k}"])
        lines.append(f"{s['seed']:>6}  {accs:<44} {s['min']:>6.2f}  {'yes' if s['passed'] else 'NO'}")
    lines += [f"seeds passing (>= 99.40% in each of the last {k} epochs): {result['seeds_passing']} of "
              f"{result['seeds_run']}",
              f"final test accuracy: {result['final_mean']:.2f} +- {result['final_std']:.2f}% (mean +- std)",
              f"minimum over every last-{k} epoch of every seed: {result['min_last_k']:.2f}%"]
    return lines


def run_seeds_shown(step: str, recipe, seeds: list[int], root: Path, data, options: Options,  # noqa: ANN001
                    last_k: int = LAST_K, record: bool = True, jobs: int = 1) -> dict | None:
    """``consistency.run_seeds`` with a header per seed, a row per epoch and progress bars; None when interrupted."""
    from .consistency import run_seeds

    progress = Progress()

    def on_run(seed: int, run: RunDir) -> None:
        reused = " (finished: reused)" if run.finished() else ""
        say("", f"{step}, seed {seed}: {run.path}{reused}", HEADER)

    shown = []

    def on_epoch(m: dict) -> None:
        progress.close()
        if "seed" not in m:
            say(epoch_row(m))
            return
        if not shown:
            shown.append(True)
            say(f"{step}: seeds {', '.join(map(str, seeds))}, {jobs} at a time; a row per epoch as each ends",
                f"{'seed':>6} " + HEADER)
        say(f"{m['seed']:>6} {epoch_row(m)}")
    try:
        return run_seeds(step, recipe, seeds, root, data, options, on_run, on_epoch, progress.batch, last_k, record,
                         jobs)
    except KeyboardInterrupt:
        progress.close()
        say("", "interrupted; finished seeds are kept and unfinished ones resume from their last completed epoch: "
                "run the same command again.")
        return None


def cmd_consistency(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.step).with_overrides(**recipe_overrides(args))
    seeds = parse_seeds(args, recipe.seed)
    data = load_data(args, args.subset)
    recipe.check(train_size=len(data.train_labels))
    options = run_options(args)
    pick_device(options.device)
    result = run_seeds_shown(args.step, recipe, seeds, Path(args.out), data, options, args.last_k, jobs=args.jobs)
    if result is None:
        return EXIT_INTERRUPTED
    say("", f"{args.step}: {result['params']:,} params, {recipe.epochs} epochs, {len(seeds)} "
            f"seed{'s' if len(seeds) != 1 else ''}",
        *consistency_lines(result), f"written to {Path(args.out) / args.step / 'consistency.json'}")
    passed = result["seeds_passing"] == result["seeds_run"]
    return EXIT_TARGETS if args.require_targets and not passed else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json).")
    record = run.record()
    original = all_steps().get(record["step"])
    published = original.published if original and original.recipe == run.recipe() else ()
    metrics = run.metrics()
    if args.markdown:
        head = "| epoch | train loss | train acc | test loss | test acc | lr | seconds |"
        say(head + (" original test acc |" if published else ""),
            "|---" * (7 + bool(published)) + "|")
        for m in metrics:
            orig = f" {published[m['epoch'] - 1]:.2f} |" if m["epoch"] <= len(published) else ""
            say(f"| {m['epoch']} | {m['train_loss']:.4f} | {m['train_acc']:.2f} | {m['test_loss']:.4f} | "
                f"{m['test_acc']:.2f} | {m['lr']:.2e} | {m['seconds']:.1f} |" + orig)
    else:
        say(HEADER + (f" {'original':>9}" if published else ""))
        for m in metrics:
            say(epoch_row(m, published[m["epoch"] - 1] if m["epoch"] <= len(published) else None))
    if run.finished():
        summary = run.summary()
        precision = summary.get("precision") or record.get("options", {}).get("precision", "unknown precision")
        say("", f"{summary['device']}, {precision}, torch {summary['torch']}, "
                f"{summary['wall_seconds']:.0f} s wall", *verdict_lines(summary))
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from .summary import flops_per_image, layer_table

    model = create_model(args.model)
    rows = layer_table(model)
    say(f"{'layer':<26} {'output':>12} {'params':>7} {'RF':>4} {'jump':>5}")
    for row in rows:
        shape = "x".join(str(d) for d in row.shape)
        say(f"{row.name:<26} {shape:>12} {row.params:>7,} {row.rf:>4} {row.jump:>5}")
    say(f"total: {count_params(model):,} params, {flops_per_image(model) / 1e6:.2f} MFLOPs per image (inference), "
        f"final receptive field {rows[-1].rf}x{rows[-1].rf} px")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .recipes import get_journey
    from .report import write_report

    steps = get_journey(args.journey)
    data = load_data(args)
    options = run_options(args)
    pick_device(options.device)
    root = Path(args.runs)
    runs = {}
    for step in steps:
        seeds = parse_seeds(args, step.recipe.seed)
        # consistency.json belongs to `tinymnist consistency`: a report over other seeds must not replace it
        if run_seeds_shown(step.name, step.recipe, seeds, root, data, options, record=False) is None:
            return EXIT_INTERRUPTED
        runs[step.name] = [RunDir(root / step.name / f"seed-{s}") for s in seeds]
    command = "tinymnist report " + " ".join(args.argv)
    path = write_report(args.journey, steps, runs, data, Path(args.out), command)
    say("", f"wrote {path} and its figures")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_run, open_run

    run = open_run(args.run)
    if not run.finished():
        raise UsageError(f"{run.path} is not finished; finish it with: tinymnist train --resume {run.path}")
    result = evaluate_run(run, load_data(args), args.device)
    say(f"test loss {result['test_loss']:.4f}, test accuracy {result['test_acc']:.2f}%",
        "per class: " + "  ".join(f"{d}:{a:.2f}" for d, a in enumerate(result["per_class"])))
    if result["test_acc"] == result["recorded"]:
        say(f"matches the recorded final test accuracy ({result['recorded']:.2f}%)")
        return EXIT_OK
    say(f"DIFFERS from the recorded final test accuracy ({result['recorded']:.2f}%): another device or "
        f"library version computes slightly differently")
    return EXIT_TARGETS


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .inference import load_run_model, normalization, open_run, predict_images, preprocess

    run = open_run(args.run)
    mean, std = normalization(run)
    model = load_run_model(run)
    images = np.stack([preprocess(Path(p)) for p in args.images])
    probs = predict_images(model, images, mean, std)
    if args.show_input:
        from .report import digit_grid

        top = probs.argmax(1).tolist()
        digit_grid(torch.from_numpy(images), [f"{Path(p).name}: {c}" for p, c in zip(args.images, top, strict=True)],
                   Path(args.show_input), "what the model saw (28x28, as MNIST)", columns=min(len(images), 6))
    results = []
    for path, p in zip(args.images, probs, strict=True):
        values, classes = p.topk(3)
        results.append({"image": path, "top3": [{"digit": int(c), "probability": round(float(v), 6)}
                                                for v, c in zip(values, classes, strict=True)]})
    if args.json:
        say(json.dumps(results, indent=2))
    else:
        for r in results:
            say(f"{r['image']}: " + "  ".join(f"{t['digit']} ({100 * t['probability']:.1f}%)" for t in r["top3"]))
    if args.show_input and not args.json:
        say(f"wrote {args.show_input}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export_onnx, load_run_model, normalization, onnx_parity, open_run

    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the [onnx] extra: pip install -e \".[onnx]\"") from None
    run = open_run(args.run)
    mean, std = normalization(run)
    model = load_run_model(run)
    out = Path(args.onnx)
    export_onnx(model, out)
    data = load_data(args)
    parity = onnx_parity(model, out, data.test_images[:1000], mean, std)
    say(f"wrote {out} (input 'image' (N, 1, 28, 28) normalized with mean {mean:.4f} std {std:.4f}; "
        f"output 'log_probs' (N, 10))",
        f"parity on {parity['images']} test images against onnxruntime: "
        f"{'identical' if parity['same_predictions'] else 'DIFFERENT'} predictions, "
        f"max |log-prob difference| {parity['max_abs_diff']:.2e}")
    ok = parity["same_predictions"] and parity["max_abs_diff"] < 1e-4
    return EXIT_OK if ok else EXIT_TARGETS


def cmd_results(args: argparse.Namespace) -> int:
    from .consistency import results_markdown
    from .recipes import EXTRA

    order = [s.name for steps in JOURNEYS.values() for s in steps] + list(EXTRA)
    table = results_markdown(Path(args.runs), order)
    text = "\n".join([
        "# Results over seeds", "",
        f"Generated by `tinymnist results --runs {args.runs} --out {args.out}` from the consistency runs; each row "
        "is reproduced by its command (add `--out DIR`). A seed passes when its test accuracy is >= 99.40% in each "
        "of the last K epochs. \"Trained with\" is the precision and the CPU threads of the runs (default: one per "
        "core); the same numbers come back only with both, on the same kind of CPU: another thread count sums in "
        "another order, and the run becomes another draw from the same recipe.", "", table, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    say(text)
    return EXIT_OK


# --- the parser ----------------------------------------------------------------------------------

def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with the four MNIST files (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    p.add_argument("--lr", type=positive_float, help="override the recipe's (peak) learning rate")
    p.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the hardware has native bf16, else fp32")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: one per core)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW tensors (slower on CPU)")
    p.add_argument("--subset", type=positive_int, help="train on the first N training images only (quick checks)")
    p.add_argument("--out", default="runs", help="parent directory of run directories (default: runs)")
    add_data_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tinymnist", description="Design, train, prove and use very small CNNs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("data", help="find (or download) MNIST, print statistics, write a grid of digits")
    add_data_args(p)
    p.add_argument("--out", default="mnist-digits.png", help="PNG grid of 60 digits (default: mnist-digits.png)")
    p.set_defaults(func=cmd_data)

    sub.add_parser("models", help="list registered models with their parameter counts").set_defaults(func=cmd_models)
    sub.add_parser("steps", help="list journeys, their steps and targets").set_defaults(func=cmd_steps)

    p = sub.add_parser("train", help="train one step (or recipe) and judge it against the targets")
    p.add_argument("step", nargs="?", help="a step or recipe name (see `tinymnist steps`)")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--resume", help="continue the interrupted run in this directory")
    p.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed")
    add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("consistency", help="train a recipe over several seeds and judge its consistency")
    p.add_argument("step", help="a step or recipe name (see `tinymnist steps`)")
    p.add_argument("--seeds", type=positive_int, default=5, help="run seeds s, s+1, ... from the recipe's seed")
    p.add_argument("--seed-list", help="comma-separated seeds, instead of --seeds")
    p.add_argument("--last-k", type=positive_int, default=LAST_K, help="epochs that must each hold 99.40%%")
    p.add_argument("--require-targets", action="store_true", help="exit 1 unless every seed passes")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="seeds trained at once, each in its own process with cores/jobs threads (default 1; "
                        "2 on a 2-core CPU gives 1.33x the throughput, docs/performance.md)")
    add_run_args(p)
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("results", help="docs/results.md from consistency runs")
    p.add_argument("--runs", default="runs", help="the --out directory of `tinymnist consistency`")
    p.add_argument("--out", default="docs/results.md", help="markdown file to write")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("summary", help="per-layer table: output shape, params, receptive field, jump")
    p.add_argument("model", help="a model name (see `tinymnist models`)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("report", help="run (or reuse) a journey's four steps and write report.md with figures")
    p.add_argument("journey", help="a journey name (see `tinymnist steps`)")
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per step, from each recipe's seed")
    p.add_argument("--seed-list", help="comma-separated seeds, instead of --seeds")
    p.add_argument("--runs", default="runs", help="where the runs are (reused when finished) or go")
    p.add_argument("--out", default="report", help="directory for report.md and figures/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=positive_int, help="CPU threads")
    p.add_argument("--no-channels-last", action="store_true", help=argparse.SUPPRESS)
    add_data_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="reload a run's weights and recompute its test accuracy, per class too")
    p.add_argument("run", help="a run directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify photos or scans of digits (PNG/JPEG, any size)")
    p.add_argument("run", help="a run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show-input", metavar="PNG", help="write the 28x28 images the model actually saw")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's model to ONNX and check it against onnxruntime")
    p.add_argument("run", help="a run directory")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    add_data_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("show", help="print a run's per-epoch table and verdict from its records")
    p.add_argument("run", help="a run directory")
    p.add_argument("--markdown", action="store_true", help="a markdown table")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]
        return args.func(args)
    except TinyMnistError as e:
        print(f"tinymnist: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tinymnist: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

