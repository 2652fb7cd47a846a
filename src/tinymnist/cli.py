"""Command line: argparse subcommands, each a few lines that parse, call the library and print. ``main(argv)``
returns the exit code: 0 ok, 1 targets missed (when asked to require them), 2 bad input, 3 a check failed
(eval differs from the record, ONNX parity), 130 interrupted, 141 output pipe closed (as `| head` does)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from .data import MNIST, load_mnist
from .errors import NameNote, TinyMnistError, UsageError
from .models import count_params, create_model, is_user_model, list_models
from .recipes import DEFAULT_RECIPE, JOURNEYS, RECIPES, Options, Step, all_steps, get_journey, get_step, user_model_step
from .records import NewRun, RunRecord, run_dir
from .render import (
    HEADER,
    epoch_row,
    epoch_table,
    layer_lines,
    over_seeds_lines,
    results_markdown,
    seed_list,
    verdict_lines,
)
from .runner import check_options, confirmation_runs, create_run, run_seeds, train_run
from .targets import LAST_K, TARGET, fresh_seeds

EXIT_OK, EXIT_TARGETS, EXIT_USAGE, EXIT_CHECK, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141


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


# --- shared pieces -------------------------------------------------------------------------------------

def load_data(args: argparse.Namespace, subset: int | None = None) -> MNIST:
    data = load_mnist(args.data_dir, not args.no_download)
    return data.subset(subset) if subset else data


def run_options(args: argparse.Namespace) -> Options:
    options = Options(device=args.device, channels_last=not args.no_channels_last, precision=args.precision,
                      threads=args.threads)
    check_options(options)  # a bad --device or --precision fails before anything is written
    return options


def recipe_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in {"epochs": getattr(args, "epochs", None), "lr": getattr(args, "lr", None),
                              "batch_size": getattr(args, "batch_size", None),
                              "seed": getattr(args, "seed", None)}.items() if v is not None}


def parse_seeds(args: argparse.Namespace, default: list[int]) -> list[int]:
    if args.seed_list:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seed-list {args.seed_list!r} must be whole numbers separated by commas.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seed-list {args.seed_list!r} must name at least one seed, each once.")
        return seeds
    return default


def step_to_train(args: argparse.Namespace) -> Step:
    """The step named on the command line, or a user's FILE.py:NAME with the recipe of --recipe."""
    if is_user_model(args.step):
        return user_model_step(args.step, args.recipe or DEFAULT_RECIPE)
    if args.recipe:
        raise UsageError(f"--recipe goes with a model of your own (FILE.py:NAME); {args.step} has its recipe.")
    return get_step(args.step)


def train_shown(run: RunRecord, data: MNIST, published: tuple[float, ...] = (), trust: bool = False) -> dict:
    progress = Progress()
    say(f"run directory: {run.path}", HEADER + (f" {'original':>9}" if published else ""))

    def on_epoch(m: dict) -> None:
        progress.close()
        e = m["epoch"]
        say(epoch_row(m, published[e - 1] if published and e <= len(published) else None))

    try:
        return train_run(run, data, on_epoch, progress.batch, trust=trust)
    finally:
        progress.close()


def seeds_shown(step: str, recipe, seeds: list[int], root: Path, data: MNIST, options: Options,  # noqa: ANN001
                last_k: int = LAST_K, jobs: int = 1, overrides: dict | None = None, trust: bool = False,
                journey_file: Path | None = None) -> dict | None:
    """``run_seeds`` with a header per seed, a row per epoch and progress bars; None when interrupted."""
    progress = Progress()

    def on_run(seed: int, run: RunRecord) -> None:
        say("", f"{step}, seed {seed}: {run.path}{' (finished: reused)' if run.finished() else ''}", HEADER)

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
        return run_seeds(step, recipe, seeds, root, data, options, on_run, on_epoch, progress.batch, last_k, jobs,
                         overrides, trust, journey_file)
    except KeyboardInterrupt:
        progress.close()
        say("", "interrupted; finished seeds are kept and unfinished ones resume from their last completed epoch: "
                "run the same command again.")
        return None


def published_for(step_name: str, run: RunRecord) -> tuple[float, ...]:
    """The original's per-epoch figures, when ``run`` is exactly the original's recipe on the whole data."""
    step = all_steps().get(step_name)
    full = run.data_sizes() == (None, None)
    return step.published if step and step.recipe == run.recipe() and full else ()


# --- subcommands ---------------------------------------------------------------------------------------

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
    def line(i: str, step) -> str:  # noqa: ANN001
        params = count_params(create_model(step.recipe.model))
        tuned = f"tuned on seed{'s' * (len(step.tuned_seeds) > 1)} {seed_list(step.tuned_seeds) or 'none'}"
        return f"  {i}{step.name} ({params:,} params, {step.recipe.epochs} epochs; {tuned}): {step.target}"

    for journey, steps in JOURNEYS.items():
        say(f"journey {journey}:", *(line(f"{i}. ", step) for i, step in enumerate(steps, 1)))
    say("other recipes:", *(line("", step) for step in RECIPES))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run = RunRecord(args.resume)
        if not run.exists():
            raise UsageError(f"{run.path} is not a run directory (no recipe.json); give the directory a train "
                             f"command wrote.")
        if run.finished():
            raise UsageError(f"{run.path} is already finished; see {run.path / 'summary.json'}.")
        data = load_data(args)
    else:
        if not args.step:
            raise UsageError("name a step to train (see `tinymnist steps`), or --resume RUN_DIR.")
        step = step_to_train(args)
        recipe = step.recipe.with_overrides(**recipe_overrides(args))
        data = load_data(args, args.subset)
        options = run_options(args)
        run = RunRecord(run_dir(args.runs, step.name, recipe.seed))
        create_run(run, NewRun(step.name, recipe, options, recipe_overrides(args)), data)
    try:
        summary = train_shown(run, data, published_for(run.step(), run), args.trust_remote_code)
    except KeyboardInterrupt:
        say("", f"interrupted; {run.path} holds every completed epoch. Resume with: "
                f"tinymnist train --resume {run.path}")
        return EXIT_INTERRUPTED
    say("", *verdict_lines(summary))
    return EXIT_TARGETS if args.require_targets and not summary["verdict"]["met"] else EXIT_OK


def cmd_consistency(args: argparse.Namespace) -> int:
    step = step_to_train(args)
    recipe = step.recipe.with_overrides(**recipe_overrides(args))
    seeds = parse_seeds(args, fresh_seeds(args.seeds, step.tuned_seeds))
    data = load_data(args, args.subset)
    recipe.check(train_size=len(data.train_labels))
    figures = seeds_shown(step.name, recipe, seeds, Path(args.runs), data, run_options(args), args.last_k, args.jobs,
                          recipe_overrides(args), args.trust_remote_code)
    if figures is None:
        return EXIT_INTERRUPTED
    say("", f"{step.name}: {figures['params']:,} params, {recipe.epochs} epochs, {len(seeds)} "
            f"seed{'s' if len(seeds) != 1 else ''}", *over_seeds_lines(figures, step.tuned_seeds))
    passed = figures["seeds_passing"] == figures["seeds_run"]
    return EXIT_TARGETS if args.require_targets and not passed else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    run = RunRecord(args.run)
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json).")
    say(*epoch_table(run.metrics(), published_for(run.step(), run), args.markdown))
    if run.finished():
        summary = run.summary()
        say("", f"{summary['device']}, {summary.get('precision', 'fp32')}, torch {summary['torch']}, "
                f"{summary['wall_seconds']:.0f} s wall", *verdict_lines(summary))
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    if args.command == "summary":
        warnings.warn(NameNote("the command 'summary' is now called 'layers'; the old name still works."),
                      stacklevel=1)
    say(*layer_lines(create_model(args.model)))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    steps = get_journey(args.journey)
    journey_file = Path(args.journey) if args.journey.endswith(".toml") else None
    data = load_data(args, args.subset)
    options = run_options(args)
    root = Path(args.runs)
    runs, fresh = {}, {}
    for step in steps:
        seeds = parse_seeds(args, [step.recipe.seed + i for i in range(args.seeds)])
        if seeds_shown(step.name, step.recipe, seeds, root, data, options, trust=args.trust_remote_code,
                       journey_file=journey_file) is None:
            return EXIT_INTERRUPTED
        runs[step.name] = [RunRecord(run_dir(root, step.name, s)) for s in seeds]
        fresh[step.name] = confirmation_runs(root, step.name, step.recipe, {*step.tuned_seeds, *seeds})
    command = "tinymnist report " + " ".join(args.argv)
    journey = journey_file.stem if journey_file else args.journey
    path = write_report(journey, steps, runs, data, Path(args.out), command, fresh=fresh, trust=args.trust_remote_code)
    say("", f"wrote {path} and its figures")
    return EXIT_OK


STARTER = ("models.py", "journey.toml", "README.md")


def cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    out = Path(args.dir)
    taken = [name for name in STARTER if (out / name).exists()]
    if taken:
        raise UsageError(f"{out} already has {', '.join(taken)}; choose an empty or new directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in STARTER:
            (out / name).write_text((files("tinymnist") / "starter" / name).read_text())
    except OSError as e:
        raise UsageError(f"cannot write the starter into {out} ({e.strerror}).") from None
    say(f"wrote {', '.join(str(out / name) for name in STARTER)}",
        f"the original exercise's four steps, ready to edit; next: cd {out} && tinymnist report journey.toml")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ImportError:
        raise UsageError("serving needs the [serve] extra: pip install \"tinymnist[serve]\"") from None
    RunRecord(args.run).require()
    say(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    serve(args.run, args.host, args.port, args.data_dir, args.trust_remote_code)
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    text = results_markdown(Path(args.runs), f"tinymnist results --runs {args.runs} --out {args.out}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    say(text)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

    run = RunRecord(args.run).require(finished=True)  # before reading MNIST: a wrong path is the likelier mistake
    result = evaluate_run(run, load_data(args), args.device, args.trust_remote_code)
    say(f"test loss {result['test_loss']:.4f}, test accuracy {result['test_acc']:.2f}%",
        "per class: " + "  ".join(f"{d}:{a:.2f}" for d, a in enumerate(result["per_class"])))
    if result["test_acc"] == result["recorded"]:
        say(f"matches the recorded final test accuracy ({result['recorded']:.2f}%)")
        return EXIT_OK
    say(f"DIFFERS from the recorded final test accuracy ({result['recorded']:.2f}%): another device or "
        f"library version computes slightly differently")
    return EXIT_CHECK


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .inference import predict_images, preprocess
    from .records import load_model

    loaded = load_model(RunRecord(args.run), args.trust_remote_code)
    images = np.stack([preprocess(Path(p)) for p in args.images])
    probs = predict_images(loaded, images)
    results = []
    for path, p in zip(args.images, probs, strict=True):
        values, classes = p.topk(3)
        results.append({"image": path, "top3": [{"digit": int(c), "probability": round(float(v), 6)}
                                                for v, c in zip(values, classes, strict=True)]})
    if args.show_input:
        from .report import digit_grid

        captions = [f"{Path(r['image']).name}: {r['top3'][0]['digit']}" for r in results]
        digit_grid(images, captions, Path(args.show_input), "what the model saw (28x28, as MNIST)",
                   columns=min(len(images), 6))
    if args.json:
        say(json.dumps(results, indent=2))
        return EXIT_OK
    for r in results:
        say(f"{r['image']}: " + "  ".join(f"{t['digit']} ({100 * t['probability']:.1f}%)" for t in r["top3"]))
    if args.show_input:
        say(f"wrote {args.show_input}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the [onnx] extra: pip install \"tinymnist[onnx]\"") from None
    from .inference import export_onnx, onnx_parity
    from .records import load_model

    loaded = load_model(RunRecord(args.run), args.trust_remote_code)
    out = Path(args.onnx)
    export_onnx(loaded.model, out)
    data = load_data(args)
    parity = onnx_parity(loaded, out, data.test_images[:1000], data.test_labels[:1000])
    say(f"wrote {out} (input 'image' (N, 1, 28, 28) normalized with mean {loaded.mean:.4f} std {loaded.std:.4f}; "
        f"output 'log_probs' (N, 10))",
        f"parity on {parity['images']} test images against onnxruntime: "
        f"{'identical' if parity['same_predictions'] else 'DIFFERENT'} predictions, "
        f"max |log-prob difference| {parity['max_abs_diff']:.2e}")
    ok = parity["same_predictions"] and parity["max_abs_diff"] < 1e-4
    return EXIT_OK if ok else EXIT_CHECK


# --- the parser --------------------------------------------------------------------------------------------

def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with the four MNIST files (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")


def add_run_args(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    """How runs are executed and where they go; with ``overrides``, the recipe settings a command may change."""
    if overrides:
        p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
        p.add_argument("--lr", type=positive_float, help="override the recipe's (peak) learning rate")
        p.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    p.add_argument("--subset", type=positive_int, help="train on the first N training images only (quick checks)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the hardware has native bf16, else fp32")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: one per core)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW tensors (slower on CPU)")
    add_trust_arg(p)
    p.add_argument("--runs", *(["--out"] if overrides else []), default="runs", metavar="DIR",
                   help="where runs live: DIR/STEP/seed-N (default: runs)")
    add_data_args(p)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running the copy of a user's model file kept in a run directory, when the original "
                        "is gone or changed (read it first: it is code)")


def add_seed_args(p: argparse.ArgumentParser, default: int, what: str) -> None:
    p.add_argument("--seeds", type=positive_int, default=default, help=what)
    p.add_argument("--seed-list", help="comma-separated seeds, instead of --seeds")


def build_parser() -> argparse.ArgumentParser:
    from .cli_search import add_search_commands  # imports this module's helpers, so not at its top
    parser = Parser(prog="tinymnist", description="Design, train, prove and use very small CNNs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("data", help="find (or download) MNIST, print statistics, write a grid of digits")
    add_data_args(p)
    p.add_argument("--out", default="mnist-digits.png", help="PNG grid of 60 digits (default: mnist-digits.png)")
    p.set_defaults(func=cmd_data)

    sub.add_parser("models", help="list registered models with their parameter counts").set_defaults(func=cmd_models)
    sub.add_parser("steps", help="list journeys, their steps, targets and tuning seeds").set_defaults(func=cmd_steps)

    p = sub.add_parser("train", help="train one step (or recipe) and judge it against the targets")
    p.add_argument("step", nargs="?", help="a step or recipe name (see `tinymnist steps`), or your own model as "
                                           "FILE.py:NAME")
    p.add_argument("--recipe", help=f"with FILE.py:NAME: train it with this step's recipe (default {DEFAULT_RECIPE})")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in this directory")
    p.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed")
    add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("consistency", help="train a recipe over several seeds and judge its consistency")
    p.add_argument("step", help="a step or recipe name (see `tinymnist steps`), or your own model as FILE.py:NAME")
    p.add_argument("--recipe", help=f"with FILE.py:NAME: train it with this step's recipe (default {DEFAULT_RECIPE})")
    add_seed_args(p, 5, "run N fresh seeds: 1001 upwards, skipping the seeds the recipe was tuned on (default 5)")
    p.add_argument("--last-k", type=positive_int, default=LAST_K,
                   help=f"epochs that must each hold {TARGET}".replace("%", "%%"))  # argparse formats help with %
    p.add_argument("--require-targets", action="store_true", help="exit 1 unless every seed passes")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="seeds trained at once, each in its own process with cores/jobs threads (default 1; "
                        "docs/performance.md measures what it gains)")
    add_run_args(p)
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("init", help="write a starter: a model file and a journey file to edit (the original's steps)")
    p.add_argument("dir", help="directory to write models.py, journey.toml and README.md into")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("results", help="docs/results.md from run records")
    p.add_argument("--runs", default="evidence/runs", help="where the runs are (default: evidence/runs)")
    p.add_argument("--out", default="docs/results.md", help="markdown file to write")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("layers", aliases=["summary"], help="per-layer table: output shape, params, receptive field")
    p.add_argument("model", help="a model name (see `tinymnist models`), or your own as FILE.py:NAME")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("report", help="run (or reuse) a journey's four steps and write report.md with figures")
    p.add_argument("journey", help="a journey name (see `tinymnist steps`), or your own journey file (NAME.toml)")
    add_seed_args(p, 1, "seeds per step, from each recipe's own seed upwards (default 1)")
    p.add_argument("--out", default="report", help="directory for report.md and figures/")
    add_run_args(p, overrides=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="reload a run's weights and recompute its test accuracy, per class too")
    p.add_argument("run", help="a run directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_trust_arg(p)
    add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify photos or scans of digits (PNG/JPEG, any size)")
    p.add_argument("run", help="a run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show-input", metavar="PNG", help="write the 28x28 images the model actually saw")
    add_trust_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's model to ONNX and check it against onnxruntime")
    p.add_argument("run", help="a run directory")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    add_trust_arg(p)
    add_data_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a page to draw a digit on and an HTTP API, for one trained run")
    p.add_argument("run", help="a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", help="MNIST files for the test-digit button (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw; never downloaded)")
    add_trust_arg(p)
    p.set_defaults(func=cmd_serve)

    add_search_commands(sub)

    p = sub.add_parser("show", help="print a run's per-epoch table and verdict from its records")
    p.add_argument("run", help="a run directory")
    p.add_argument("--markdown", action="store_true", help="a markdown table")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out
        show, noted = warnings.showwarning, set()

        def note(message, category, *rest):  # noqa: ANN001, ANN002, ANN202 - warnings.showwarning's signature
            if not issubclass(category, NameNote):
                show(message, category, *rest)
            elif str(message) not in noted:  # an old name, accepted: one line, once
                noted.add(str(message))
                print(f"tinymnist: note: {message}", file=sys.stderr)

        warnings.simplefilter("always", NameNote)
        warnings.showwarning = note
        try:
            args = build_parser().parse_args(argv)
            args.argv = argv[1:]
            return args.func(args)
        except TinyMnistError as e:
            print(f"tinymnist: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("tinymnist: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # the reader went away (`| head`): say nothing more, and keep Python from complaining at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PIPE
