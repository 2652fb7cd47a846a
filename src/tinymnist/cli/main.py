"""Command line: argparse subcommands, each a few lines that parse, call the library and print. ``main(argv)``
returns the exit code: 0 ok, 1 targets missed (when asked to require them), 2 bad input, 3 a check failed
(eval differs from the record, ONNX parity), 130 interrupted, 141 output pipe closed (as `| head` does)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from tinymnist import __version__
from tinymnist.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_TARGETS,
    EXIT_USAGE,
    Parser,
    add_data_args,
    add_run_args,
    add_seed_args,
    load_data,
    model_of,
    parse_seeds,
    positive_int,
    published_for,
    run_options,
    say,
    seeds_shown,
    spec_for,
    step_to_train,
    train_shown,
)
from tinymnist.cli.journey import add_journey_commands
from tinymnist.cli.search import add_search_commands
from tinymnist.cli.use import add_use_commands
from tinymnist.errors import NameNote, Note, TinyMnistError, UsageError, counted
from tinymnist.names import current
from tinymnist.reports.render import (
    csv_lines,
    epoch_table,
    layer_lines,
    over_seeds_lines,
    run_lines,
    seed_list,
    verdict_lines,
)
from tinymnist.reports.results_doc import headline_readme, results_markdown, table_rows
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.steps.builtin import DEFAULT_RECIPE, JOURNEYS, RECIPES
from tinymnist.targets import LAST_K, TARGET, fresh_seeds

# Parsing, `--version` and the commands that read records load no torch: the models, MNIST and the training
# loop are imported inside the commands that use them (tests/test_cli.py).

# --- subcommands ---------------------------------------------------------------------------------------

def cmd_data(args: argparse.Namespace) -> int:
    from tinymnist.data import load_mnist
    from tinymnist.reports.report import digit_grid  # matplotlib only when a figure is asked for

    data = load_mnist(args.data_dir, not args.no_download)
    say(f"files found in {data.source.resolve()}",
        f"train: {len(data.train_labels):,} images   test: {len(data.held_out_labels):,} images")
    for split, labels in (("train", data.train_labels), ("test", data.held_out_labels)):
        counts = labels.bincount(minlength=10).tolist()
        say(f"{split} per class: " + "  ".join(f"{d}:{c:,}" for d, c in enumerate(counts)))
    say(f"normalization (from the training images): mean {data.mean:.4f}, std {data.std:.4f}")
    for split, images in (("train", data.train_images), ("test", data.held_out_images)):
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
    from tinymnist.models import count_params, create_model, list_models

    say(f"{'model':<18} {'params':>7}")
    for name in list_models():
        say(f"{name:<18} {count_params(create_model(name)):>7,}")
    return EXIT_OK


def cmd_steps(args: argparse.Namespace) -> int:
    import textwrap

    from tinymnist.models import count_params, create_model  # the parameter counts build each model

    def lines(i: str, step) -> list[str]:
        params = count_params(create_model(step.recipe.model))
        tuned = f"tuned on seed{'s' * (len(step.tuned_seeds) > 1)} {seed_list(step.tuned_seeds) or 'none'}"
        head = f"  {i}{step.name} ({params:,} params, {counted(step.recipe.epochs, 'epoch')}; {tuned})"
        return [head, *textwrap.wrap(step.target, 80, initial_indent="      ", subsequent_indent="      ")]

    for journey, steps in JOURNEYS.items():
        say(f"journey {journey}:", *(line for i, step in enumerate(steps, 1) for line in lines(f"{i}. ", step)))
    say("other recipes:", *(line for step in RECIPES for line in lines("", step)))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from tinymnist.models import create_model
    from tinymnist.runs.runner import create_run

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
        journey = None
        if ".toml:" in args.step:  # a journey's step alone, with its own recipe
            from tinymnist.steps.journey_file import journey_step

            if args.recipe:
                raise UsageError(f"{args.step} is a journey's step, trained with its own recipe; drop --recipe.")
            step, journey = journey_step(args.step)
        else:
            step = step_to_train(args)
        spec = spec_for(args, step, run_options(args), journey)
        create_model(spec.recipe.model)  # a wrong model file or name is the likelier mistake: before MNIST
        data = load_data(args, args.subset)
        run = RunRecord(run_dir(args.runs, step.name, spec.recipe.seed))
        create_run(run, spec, data)
    try:
        sinks = ()
        if args.tensorboard:
            from tinymnist.runs.logsinks import TensorBoardSink

            sinks = (TensorBoardSink(Path(args.tensorboard) / run.step() / run.path.name),)
        summary = train_shown(run, data, published_for(run.step(), run), args.trust_remote_code, args.quiet, sinks)
    except KeyboardInterrupt:
        say("", f"interrupted; {run.path} holds every completed epoch. Resume with: "
                f"tinymnist train --resume {run.path}")
        return EXIT_INTERRUPTED
    from tinymnist.reports.render import did_not_learn

    say("", *verdict_lines(summary), *filter(None, [did_not_learn(run.metrics())]))
    return EXIT_TARGETS if args.require_targets and not summary["verdict"]["met"] else EXIT_OK


def cmd_consistency(args: argparse.Namespace) -> int:
    from tinymnist.models import create_model

    step = step_to_train(args)
    spec = spec_for(args, step, run_options(args))
    seeds = parse_seeds(args, fresh_seeds(args.seeds, step.tuned_seeds))
    args.last_k = args.last_k or min(LAST_K, spec.recipe.epochs)  # unsaid: the exercise's 5, or every epoch
    if args.last_k > spec.recipe.epochs:
        raise UsageError(f"--last-k {args.last_k} is more than the recipe's {counted(spec.recipe.epochs, 'epoch')}; "
                         f"give at most {spec.recipe.epochs}.")
    create_model(spec.recipe.model)
    data = load_data(args, args.subset)
    spec.recipe.check(train_size=len(data.train_labels))
    from tinymnist.cli.journey import renew_runs  # like make: a run of another identity trains anew, said why

    said = renew_runs(Path(args.runs), spec, seeds, data, "this consistency")
    say(f"{step.name}: " + ", ".join(f"seed {s} {h}" for s, h in zip(seeds, said, strict=True)))
    figures = seeds_shown(spec, seeds, Path(args.runs), data, args.last_k, args.jobs, args.trust_remote_code)
    if figures is None:
        return EXIT_INTERRUPTED
    say("", f"{step.name}: {figures['params']:,} params, {counted(spec.recipe.epochs, 'epoch')}, "
            f"{counted(len(seeds), 'seed')}", *over_seeds_lines(figures, step.tuned_seeds))
    passed = figures["seeds_passing"] == figures["seeds_run"]
    return EXIT_TARGETS if args.require_targets and not passed else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    run = RunRecord(args.run)
    if not run.exists():
        raise UsageError(f"{run.path} is not a run directory (no recipe.json).")
    metrics = run.metrics()
    if not metrics:
        raise UsageError(f"{run.path} has no completed epoch yet; train it with: tinymnist train --resume {run.path}")
    if args.csv:
        say(*csv_lines(metrics))
        return EXIT_OK
    say(*run_lines(run))
    say(*epoch_table(metrics, published_for(run.step(), run), args.markdown))
    if run.finished():
        summary = run.summary()
        say("", f"{summary['device']}, {summary.get('precision', 'fp32')}, torch {summary['torch']}, "
                f"{summary['wall_seconds']:.0f} s wall", *verdict_lines(summary))
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    from tinymnist.models import create_model

    current("command", args.command)
    say(*layer_lines(create_model(model_of(args.model))))
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    if args.readme:
        readme = Path(args.readme)
        try:
            readme.write_text(headline_readme(readme.read_text(), Path(args.runs)))
        except OSError as e:
            raise UsageError(f"cannot rewrite {readme} ({e.strerror}).") from None
        say(f"wrote the headline table of {readme} from the run records under {args.runs}")
        return EXIT_OK
    out = Path(args.out or "docs/results.md")
    if args.out is None and not out.parent.is_dir():  # not in a checkout: say what is needed, write nothing
        raise UsageError("there is no docs/ folder here to hold docs/results.md: run `tinymnist results` in a "
                         "checkout of tinymnist, or say where to write with --out FILE (and where the run records "
                         "are with --runs DIR).")
    text = results_markdown(Path(args.runs), f"tinymnist results --runs {args.runs} --out {out}", str(args.runs))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror}).") from None
    say(f"wrote {out}: {counted(table_rows(text), 'table row')} from the run records under {args.runs}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tinymnist", description="Design, train, prove and use very small CNNs on MNIST.")
    parser.add_argument("--version", action="version", version=f"tinymnist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND",
                                title="commands (tinymnist COMMAND --help for each)")

    p = sub.add_parser("data", help="find (or download) MNIST, print statistics, write a grid of digits")
    add_data_args(p)
    p.add_argument("--out", default="mnist-digits.png", help="PNG grid of 60 digits (default: mnist-digits.png)")
    p.set_defaults(func=cmd_data)

    sub.add_parser("models", help="list registered models with their parameter counts").set_defaults(func=cmd_models)
    sub.add_parser("steps", help="list journeys, their steps, targets and tuning seeds").set_defaults(func=cmd_steps)

    _add_train(sub)
    _add_consistency(sub)

    p = sub.add_parser("results", help="docs/results.md from run records")
    p.add_argument("--runs", default="evidence/runs", help="where the runs are (default: evidence/runs)")
    p.add_argument("--out", help="markdown file to write (default: docs/results.md, in a checkout)")
    p.add_argument("--readme", metavar="FILE", help="instead, regenerate the headline table of FILE (README.md)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("layers", aliases=["summary"], help="per-layer table: output shape, params, receptive field")
    p.add_argument("model", help="a model or step name (see `tinymnist models`, `tinymnist steps`), or your own "
                                 "model as FILE.py:NAME")
    p.set_defaults(func=cmd_layers)

    add_journey_commands(sub)
    add_use_commands(sub)
    add_search_commands(sub)

    p = sub.add_parser("show", help="print a run's per-epoch table and verdict from its records")
    p.add_argument("run", help="a run directory")
    p.add_argument("--markdown", action="store_true", help="a markdown table")
    p.add_argument("--csv", action="store_true", help="the per-epoch metrics as CSV (a header line, then one line "
                                                      "per epoch)")
    p.set_defaults(func=cmd_show)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist train`."""
    p = sub.add_parser("train", help="train one step (or recipe) and judge it against the targets")
    p.add_argument("step", nargs="?", help="a step or recipe name (see `tinymnist steps`), your own model as "
                                           "FILE.py:NAME, or a step of your journey as JOURNEY.toml:STEP (its "
                                           "own recipe)")
    p.add_argument("--recipe", help=f"with FILE.py:NAME: train it with this step's recipe (default {DEFAULT_RECIPE})")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in this directory")
    p.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--quiet", action="store_true", help="print only the verdict (no introduction, rows or bar)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars per epoch under "
                                                        "DIR/STEP/seed-N (the [tensorboard] extra; view: "
                                                        "tensorboard --logdir DIR)")
    add_run_args(p)
    p.set_defaults(func=cmd_train)


def _add_consistency(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist consistency`."""
    p = sub.add_parser("consistency", help="train a recipe over several seeds and judge its consistency")
    p.add_argument("step", help="a step or recipe name (see `tinymnist steps`), or your own model as FILE.py:NAME")
    p.add_argument("--recipe", help=f"with FILE.py:NAME: train it with this step's recipe (default {DEFAULT_RECIPE})")
    add_seed_args(p, 5, "run N fresh seeds: 1001 upwards, skipping the seeds the recipe was tuned on (default 5)")
    p.add_argument("--last-k", type=positive_int,
                   help=f"epochs that must each hold {TARGET} (default {LAST_K}, or every epoch of a shorter "
                        f"run)".replace("%", "%%"))  # argparse formats help with %
    p.add_argument("--require-targets", action="store_true", help="exit 1 unless every seed passes")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="seeds trained at once, each in its own process with cores/jobs threads (default 1; "
                        "docs/performance.md measures what it gains)")
    add_run_args(p)
    p.set_defaults(func=cmd_consistency)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out
        show, noted, renamed = warnings.showwarning, set(), []

        def note(message, category, *rest):  # warnings.showwarning's signature
            if not issubclass(category, Note):
                show(message, category, *rest)
            elif issubclass(category, NameNote):  # old names accepted: said together, in one line at the end
                text = str(message).removesuffix("; the old name still works.")
                renamed.extend([text] if text not in renamed else [])
            elif str(message) not in noted:  # any other note: one line, once
                noted.add(str(message))
                print(f"tinymnist: note: {message}", file=sys.stderr)

        warnings.simplefilter("always", Note)
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
        finally:
            if renamed:
                print(f"tinymnist: note: {'; '.join(renamed)}; the old name{'s' * (len(renamed) > 1)} still "
                      f"work{'s' * (len(renamed) == 1)}.", file=sys.stderr)
