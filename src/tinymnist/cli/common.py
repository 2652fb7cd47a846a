"""What the commands share: argument types and groups, output (a line, progress bars, a table per epoch), and
the few steps every training command takes (its data, its options, its seeds). cli/main.py and cli/search.py both
import it; it imports neither."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tinymnist.errors import UsageError
from tinymnist.names import current
from tinymnist.reports.render import HEADER, epoch_row, model_line, recipe_line, run_lines
from tinymnist.runs.records import RunRecord
from tinymnist.settings import OVERRIDES, SEED
from tinymnist.steps.builtin import DEFAULT_RECIPE, all_steps, get_step, user_model_step
from tinymnist.targets import LAST_K
from tinymnist.training.recipes import Options, RunSpec, Step

if TYPE_CHECKING:
    from tqdm import tqdm

    from tinymnist.data import MNIST

# Commands that only read records start without torch: what trains, builds models or reads MNIST is imported
# inside the functions that do it (tests/test_cli.py holds the command line to it).

EXIT_OK, EXIT_TARGETS, EXIT_USAGE, EXIT_CHECK, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one sentence and status 2
        raise UsageError(f"{message} (see {self.prog} --help).")


def positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def count_int(text: str) -> int:
    """A whole number of at least 0 (an argparse type)."""
    return positive_int(text, 0)


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
    """A tqdm bar per epoch on a terminal (batches done, rate, the epoch's ETA); nothing between the per-epoch
    rows otherwise: a log gets one plain line per epoch."""

    def __init__(self, enabled: bool = True) -> None:
        self.bar: tqdm | None = None
        self.enabled = enabled and sys.stderr.isatty()

    def batch(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, leave=False, unit="batch", dynamic_ncols=True, desc="epoch")
        self.bar.update(done - self.bar.n)
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- shared pieces -------------------------------------------------------------------------------------

def load_data(args: argparse.Namespace, subset: int | None = None) -> MNIST:
    from tinymnist.data import load_mnist

    data = load_mnist(args.data_dir, not args.no_download)
    if subset and subset > len(data.train_labels):
        raise UsageError(f"--subset {subset} is more than the {len(data.train_labels):,} training images there are; "
                         f"give at most {len(data.train_labels)}, or leave --subset out for all of them.")
    return data.subset(subset) if subset else data


def run_options(args: argparse.Namespace) -> Options:
    from tinymnist.runs.runner import check_options

    options = Options(device=args.device, channels_last=not args.no_channels_last, precision=args.precision,
                      threads=args.threads, compile=args.compile)
    check_options(options)  # a bad --device, --precision or --compile fails before anything is written
    return options


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe settings the command line changed (settings.OVERRIDES and the seed), as a run records them."""
    return {k: getattr(args, k) for k in (*(o.field for o in OVERRIDES), SEED) if getattr(args, k, None) is not None}


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
    from tinymnist.models import is_user_model

    if is_user_model(args.step):
        return user_model_step(args.step, args.recipe or DEFAULT_RECIPE)
    if args.recipe:
        raise UsageError(f"--recipe goes with a model of your own (FILE.py:NAME); {args.step} has its recipe.")
    return get_step(args.step)


def model_of(name: str) -> str:
    """The model a name stands for where a model is wanted (`layers`): a step's or recipe's name gives its
    model; a model's name, a family's or a user's FILE.py:NAME stays as it is."""
    from tinymnist.models import list_models

    if ":" in name or name in list_models():
        return name
    step = current("step", name)
    return all_steps()[step].recipe.model if step in all_steps() else name


def spec_for(args: argparse.Namespace, step: Step, options: Options, journey_file: Path | None = None) -> RunSpec:
    """The RunSpec of ``step`` with the recipe settings the command line changed (recorded as overrides)."""
    overrides = recipe_overrides(args)
    return RunSpec(recipe=step.recipe.with_overrides(**overrides), options=options, step=step.name,
                   tuned_seeds=step.tuned_seeds,
                   overrides=overrides, journey_file=str(journey_file) if journey_file else None)


def train_shown(run: RunRecord, data: MNIST, published: tuple[float, ...] = (), trust: bool = False,
                quiet: bool = False, sinks: tuple = ()) -> dict:
    """Train ``run`` with a word on what it trains first, then a row per epoch (a bar with the epoch's ETA on a
    terminal); ``quiet``: nothing until the verdict."""
    from tinymnist.runs.runner import train_run

    progress = Progress(enabled=not quiet)
    if not quiet:
        say(*introduction(run, trust), HEADER + (f" {'original':>9}" if published else ""))

    def on_epoch(m: dict) -> None:
        progress.close()
        if not quiet:
            e = m["epoch"]
            say(epoch_row(m, published[e - 1] if published and e <= len(published) else None))

    try:
        return train_run(run, data, on_epoch, progress.batch, trust=trust, sinks=sinks)
    finally:
        progress.close()


def introduction(run: RunRecord, trust: bool = False) -> list[str]:
    """What a training is about to do, before its first epoch: the run, the model, the recipe, the data."""
    from tinymnist.models import create_model

    recipe = run.recipe()
    model = create_model(recipe.model, run.model_source(trust))
    done = len(run.metrics())
    return [f"run directory: {run.path}" + (f" (resuming after epoch {done})" if done else ""),
            f"model: {recipe.model}: {model_line(model)}",
            f"recipe: {recipe_line(recipe)}; seed {recipe.seed}",
            f"data: {run_lines(run)[1].removeprefix('trained on ')}",
            "columns: loss is the mean NLL; accuracy in %; lr per batch at the epoch's end; seconds per epoch"]


def seeds_shown(spec: RunSpec, seeds: list[int], root: Path, data: MNIST, last_k: int = LAST_K, jobs: int = 1,
                trust: bool = False) -> dict | None:
    """``run_seeds`` with a header per seed, a row per epoch and progress bars; None when interrupted."""
    from tinymnist.runs.runner import run_seeds

    progress = Progress()
    step = spec.step

    def on_run(seed: int, run: RunRecord) -> None:
        say("", f"{step}, seed {seed}: {run.path}{' (finished: reused)' if run.finished() else ''}", HEADER)
        if run.finished():  # nothing trains: its recorded epochs, so that the table is never empty
            say(*(epoch_row(m) for m in run.metrics()))

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
        return run_seeds(spec, seeds, root, data, on_run, on_epoch, progress.batch, last_k, jobs, trust)
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


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with the four MNIST files (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")


# what each kind of value an override takes (settings.Override.takes) is read with
VALUE_TYPES = {"count": positive_int, "positive": positive_float, "number": float, "run": str}


def add_run_args(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    """How runs are executed and where they go; with ``overrides``, the recipe settings a command may change."""
    if overrides:
        for o in OVERRIDES:
            p.add_argument(o.flag, type=VALUE_TYPES[o.takes], metavar=o.metavar, help=o.help)
    p.add_argument("--subset", type=positive_int, help="train on the first N training images only (quick checks)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): fp32; bf16: bf16 autocast (docs/findings.md, \"Precision\", says why)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: one per core)")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep NCHW tensors (slower on CPU at one thread; docs/speed.md)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="the training step through torch.compile; auto (default): on for a CPU training of ten "
                        "MNIST epochs or more on two or more threads (docs/speed.md)")
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


