"""The commands of a journey (`init`, `report`, `check`): write a starter, report a journey's four steps, and
check a journey's committed run records against the targets without training (what a student's CI runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinymnist.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TARGETS,
    add_run_args,
    add_seed_args,
    load_data,
    parse_seeds,
    run_options,
    say,
    seeds_shown,
    spec_for,
)
from tinymnist.errors import UsageError
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.steps.builtin import get_journey


def cmd_report(args: argparse.Namespace) -> int:
    from tinymnist.reports.report import write_report
    from tinymnist.runs.runner import confirmation_runs

    steps = get_journey(args.journey)
    journey_file = Path(args.journey) if args.journey.endswith(".toml") else None
    data = load_data(args, args.subset)
    options = run_options(args)
    root = Path(args.runs)
    runs, fresh = {}, {}
    for step in steps:
        seeds = parse_seeds(args, [step.recipe.seed + i for i in range(args.seeds)])
        spec = spec_for(args, step, options, journey_file)
        if seeds_shown(spec, seeds, root, data, trust=args.trust_remote_code) is None:
            return EXIT_INTERRUPTED
        runs[step.name] = [RunRecord(run_dir(root, step.name, s)) for s in seeds]
        fresh[step.name] = confirmation_runs(root, step.name, spec, {*step.tuned_seeds, *seeds})
    command = "tinymnist report " + " ".join(args.argv)
    journey = journey_file.stem if journey_file else args.journey
    from tinymnist.use.inference import confident_predictions

    predictions = {step.name: confident_predictions(runs[step.name][0], data, args.trust_remote_code) for step in steps}
    path = write_report(journey, steps, runs, data, Path(args.out), command, fresh=fresh, trust=args.trust_remote_code,
                        base=journey_file.parent if journey_file else None, predictions=predictions)
    say("", f"wrote {path} and its figures")
    return EXIT_OK


# what `init` writes -> the file of src/tinymnist/starter/ it copies
STARTER = {"models.py": "models.py", "journey.toml": "journey.toml", "README.md": "README.md",
           ".github/workflows/tinymnist.yml": "workflow.yml", ".gitignore": "gitignore.txt"}


def cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    out = Path(args.dir)
    taken = [name for name in STARTER if (out / name).exists()]
    if taken:
        raise UsageError(f"{out} already has {', '.join(taken)}; choose an empty or new directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in STARTER:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text((files("tinymnist") / "starter" / STARTER[name]).read_text())
    except OSError as e:
        raise UsageError(f"cannot write the starter into {out} ({e.strerror}).") from None
    say(f"wrote {', '.join(str(out / name) for name in STARTER)}",
        f"the original exercise's four steps, ready to edit; next: cd {out} && tinymnist report journey.toml")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Every step of the journey has a finished run record under --runs; the last step (every step with
    --all-steps) meets every target. Reads the records only: nothing is trained."""
    steps = get_journey(args.journey)
    missing, failed = [], []
    for i, step in enumerate(steps, 1):
        run = RunRecord(run_dir(args.runs, step.name, step.recipe.seed))
        if not run.finished():
            missing.append(str(run.path))
            continue
        summary = run.summary()
        judged = args.all_steps or i == len(steps)
        met = summary["verdict"]["met"]
        say(f"{i}. {step.name.rsplit('/', 1)[-1]}: {summary['params']:,} params, last-5 minimum "
            f"{summary['min_test_acc_last_5']:.2f}%: {'every target met' if met else 'targets missed'}"
            f"{'' if judged else ' (not checked: only the last step must meet them)'}")
        if judged and not met:
            failed.append(step.name)
    if missing:
        raise UsageError(f"no finished run for {len(missing)} step(s) ({', '.join(missing)}); train them with "
                         f"`tinymnist report {args.journey}` and commit their recipe.json, metrics.jsonl and "
                         f"summary.json.")
    say("check passed" if not failed else f"check FAILED: {', '.join(failed)} misses a target")
    return EXIT_TARGETS if failed else EXIT_OK


def add_journey_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a starter: a model file and a journey file to edit (the original's steps)")
    p.add_argument("dir", help="directory to write models.py, journey.toml, README.md, a CI workflow and "
                                ".gitignore into")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("report", help="run (or reuse) a journey's four steps and write report.md with figures")
    p.add_argument("journey", help="a journey name (see `tinymnist steps`), or your own journey file (NAME.toml)")
    add_seed_args(p, 1, "seeds per step, from each recipe's own seed upwards (default 1)")
    p.add_argument("--out", default="report", help="directory for report.md and figures/")
    add_run_args(p, overrides=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("check", help="check a journey's committed run records against the targets (no training)")
    p.add_argument("journey", help="a journey name, or your own journey file (NAME.toml)")
    p.add_argument("--runs", default="runs", help="where the journey's runs are (default: runs)")
    p.add_argument("--all-steps", action="store_true", help="every step must meet every target, not only the last")
    p.set_defaults(func=cmd_check)
