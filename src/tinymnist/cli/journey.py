"""The commands of a journey (`init`, `report`, `check`): write a starter, report a journey's four steps, and
check a journey's committed run records against the targets without training (what a student's CI runs).

Module-level imports are the standard library's alone: `tinymnist check` runs where torch is not installed
(``check_main``); the other commands import what they need inside."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from tinymnist.errors import TinyMnistError, UsageError, counted
from tinymnist.targets import LAST_K


def _say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def renew_runs(root: Path, spec: object, seeds: list[int], data: object, asking: str = "this report") -> list[str]:
    """Like make: per seed, "reused" (a finished run of this same identity), "resumed" (an unfinished one),
    "trained" (none yet) or "retrained: WHY" (a run of another identity, removed here so that it trains anew).
    ``spec``: the step's RunSpec; ``data``: the images the command trains on."""
    import shutil

    from tinymnist.reports.report import same_run
    from tinymnist.runs.records import RunRecord, run_dir

    said = []
    for seed in seeds:
        run = RunRecord(run_dir(root, spec.step, seed))
        if not run.exists():
            said.append("trained")
            continue
        differs = same_run(run, spec.with_seed(seed), data, asking)
        if not differs:
            said.append("reused" if run.finished() else f"resumed after epoch {len(run.metrics())}")
            _keep_current_file(run)
            continue
        with run.lock():  # not while another process writes it
            shutil.rmtree(run.path)
        said.append(f"retrained: {'; '.join(differs)}")
    return said


def _keep_current_file(run: object) -> None:
    """A reused run of a user's model whose file changed elsewhere (another class of it: this model's code is the
    same) keeps the current file as its copy, so that loading it needs no --trust-remote-code."""
    from tinymnist.files import write_atomic, write_json
    from tinymnist.models import file_sha256, split_user_model

    header = run.header()
    source = header.get("model_source")
    if not source:
        return
    path = split_user_model(run.recipe().model)[0]
    if not path.is_file() or file_sha256(path) == source["sha256"]:
        return
    with run.lock():
        write_atomic(run / source["file"], path.read_bytes())
        write_json(run / "recipe.json", {**header, "model_source": {**source, "sha256": file_sha256(path)}})


def cmd_report(args: argparse.Namespace) -> int:
    from tinymnist.cli.common import load_data, parse_seeds, run_options, say, seeds_shown, spec_for
    from tinymnist.reports.report import same_run, write_report
    from tinymnist.runs.records import RunRecord, run_dir
    from tinymnist.runs.runner import confirmation_runs
    from tinymnist.steps.builtin import get_journey
    from tinymnist.steps.journey_file import journey_entries, preflight

    steps = get_journey(args.journey)
    journey_file = Path(args.journey) if args.journey.endswith(".toml") else None
    entries = journey_entries(journey_file) if journey_file else None
    options = run_options(args)
    say("The journey, checked before anything trains (each model built and run on a probe batch):",
        *preflight(steps))
    out = Path(args.out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write the report into {out} ({e.strerror}); give --out a folder you can write "
                         f"to.") from None
    data = load_data(args, args.subset)
    for i, step in enumerate(steps, 1):
        try:
            spec_for(args, step, options).recipe.check(train_size=len(data.train_labels))
        except UsageError as e:
            raise UsageError(f"step {i} ({step.name.rsplit('/', 1)[-1]}): {e}") from None
    root = Path(args.runs)
    runs, fresh, how = {}, {}, {}
    for step in steps:
        seeds = parse_seeds(args, [step.recipe.seed + i for i in range(args.seeds)])
        spec = spec_for(args, step, options, journey_file)
        how[step.name] = renew_runs(root, spec, seeds, data)
        say("", f"{step.name}: " + ", ".join(f"seed {s} {h}" for s, h in zip(seeds, how[step.name], strict=True)))
        if seeds_shown(spec, seeds, root, data, trust=args.trust_remote_code) is None:
            return 130
        runs[step.name] = [RunRecord(run_dir(root, step.name, s)) for s in seeds]
        fresh[step.name] = [r for r in confirmation_runs(root, step.name, spec, {*step.tuned_seeds, *seeds})
                            if not same_run(r, spec.with_seed(r.recipe().seed), data)]  # this step's own runs only
    command = "tinymnist report " + " ".join(args.argv)
    from tinymnist.use.inference import confident_predictions

    predictions = {step.name: confident_predictions(runs[step.name][0], data, args.trust_remote_code) for step in steps}
    analyses = {e.step_name(journey_file): e.analysis for e in entries.entries} if entries else {}
    try:
        path = write_report(entries.title if entries else f"The {args.journey} journey", steps, runs, data, out,
                            command, fresh=fresh, trust=args.trust_remote_code,
                            base=journey_file.parent if journey_file else None, predictions=predictions, how=how,
                            analyses=analyses, quick=args.epochs)
    except OSError as e:
        where = Path(e.filename or out)
        if where.resolve().is_relative_to(out.resolve()):
            raise UsageError(f"cannot write the report into {out} ({e.strerror}); give --out a folder you can write "
                             f"to.") from None
        raise UsageError(f"cannot read {where} for the report ({e.strerror}).") from None
    say("", f"wrote {path} and its figures")
    return 0


# what `init` writes -> the file of src/tinymnist/starter/ it copies
STARTER = {"models.py": "models.py", "journey.toml": "journey.toml", "README.md": "README.md",
           ".github/workflows/tinymnist.yml": "workflow.yml", ".gitignore": "gitignore.txt"}
CHECKER = ".github/tinymnist"  # where `init` puts the wheel the CI check installs


def checker_wheel(folder: Path) -> Path:
    """A wheel of this very tinymnist (its files as installed, no dependencies declared) written into ``folder``:
    what the workflow `init` writes installs with `pip install --no-deps` to run `tinymnist check`, which needs
    the standard library alone. The student commits it; nothing is fetched from a package index."""
    import base64
    import hashlib
    import zipfile

    import tinymnist

    root, version = Path(tinymnist.__file__).parent, tinymnist.__version__
    dist = f"tinymnist-{version}.dist-info"
    files = {f"tinymnist/{p.relative_to(root).as_posix()}": p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts}
    files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: tinymnist\nVersion: {version}\nSummary: the copy of "
                                 f"tinymnist `tinymnist init` wrote, for `tinymnist check` (no dependencies: it reads "
                                 f"JSON)\nRequires-Python: >=3.11\n").encode()
    files[f"{dist}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tinymnist init\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    files[f"{dist}/entry_points.txt"] = b"[console_scripts]\ntinymnist = tinymnist.cli:entry\n"

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    path = folder / f"tinymnist-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return path


def cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    out = Path(args.dir)
    taken = [name for name in [*STARTER, CHECKER] if (out / name).exists()]
    if taken:
        raise UsageError(f"{out} already has {', '.join(taken)}; choose an empty or new directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in STARTER:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text((files("tinymnist") / "starter" / STARTER[name]).read_text())
        wheel = checker_wheel(out / CHECKER)
    except OSError as e:
        raise UsageError(f"cannot write the starter into {out} ({e.strerror}).") from None
    _say(f"wrote {', '.join(str(out / name) for name in STARTER)} and {wheel} (the checker the CI workflow installs)",
         f"the original exercise's four steps, ready to edit; next: cd {out} && tinymnist report journey.toml")
    return 0


def _check_steps(journey: str) -> list[tuple[str, str, str, dict, object]]:
    """Per step of ``journey`` (a built-in name or a journey file): its label, run-directory name, model, the
    recipe settings its entry sets and its seed; read with the standard library alone for a journey file."""
    if journey.endswith(".toml"):
        from tinymnist.steps.journey_file import journey_entries

        path = Path(journey)
        return [(e.name, e.step_name(path), e.model, e.settings, e.settings.get("seed", DEFAULT_SEED))
                for e in journey_entries(path).entries]
    from tinymnist.steps.builtin import get_journey

    return [(s.name, s.name, s.recipe.model, dataclasses.asdict(s.recipe), s.recipe.seed) for s in get_journey(journey)]


DEFAULT_SEED = 121  # Recipe's default seed, for a journey file that sets none (the check cannot import Recipe)


def cmd_check(args: argparse.Namespace) -> int:
    """Every step of the journey has a finished run record under --runs; the last step (every step with
    --all-steps) meets every target. Reads the records only, nothing is trained, and with the standard library
    alone: the verdict is recomputed from metrics.jsonl, summary.json is compared with it, and each step's
    journey entry with what its run recorded."""
    from tinymnist.reports.check import data_line, entry_differences, judge_evidence, kept_settings, read_evidence
    from tinymnist.reports.check import run_path as run_dir

    steps = _check_steps(args.journey)
    builtin = not args.journey.endswith(".toml")
    missing, failed, lines = [], [], []
    for i, (label, name, model, settings, seed) in enumerate(steps, 1):
        path = run_dir(args.runs, name, seed)
        run = read_evidence(path)
        if run is None:
            missing.append(str(path))
            continue
        if builtin:  # a built-in step's record may predate a recipe field: read it as this version does
            from tinymnist.runs.records import recipe_from_dict

            recipe = dataclasses.asdict(recipe_from_dict(run.recipe))
            run = dataclasses.replace(run, header={**run.header, "recipe": recipe})
        judged = judge_evidence(run)
        differs = entry_differences(model, settings, run, kept_settings(run, label))
        judged_here = args.all_steps or i == len(steps)
        verdict = "every target met" if judged.met else "targets missed" if judged_here else "not every target met"
        lines.append(f"{i}. {label}: {judged.params:,} params, {counted(judged.epochs, 'epoch')} on "
                     f"{data_line(run.header)}, "
                     f"last-{LAST_K} minimum {judged.min_last_k:.2f}%: {verdict}"
                     f"{'' if judged_here or judged.met else ' (fine here: only the last step must meet them)'}")
        if judged.disagreements:
            lines.append(f"   {path / 'summary.json'} disagrees with its metrics.jsonl: "
                         f"{'; '.join(judged.disagreements)}")
            failed.append(f"{label} (summary.json disagrees with its log)")
        if differs:
            lines.append(f"   the journey's entry no longer matches this run: {'; '.join(differs)}")
            failed.append(f"{label} (its run is not the journey's: retrain it with tinymnist report "
                          f"{args.journey}{_runs_flag(args.runs)})")
        if judged_here and not judged.met:
            failed.append(f"{label} misses a target")
    if missing:
        raise UsageError(f"no finished run for {counted(len(missing), 'step')} ({', '.join(missing)}); train "
                         f"{'them' if len(missing) > 1 else 'it'} with "
                         f"`tinymnist report {args.journey}{_runs_flag(args.runs)}` and commit their recipe.json, "
                         f"metrics.jsonl and summary.json.")
    _say(*lines, "check passed" if not failed else f"check FAILED: {'; '.join(failed)}")
    return 1 if failed else 0


def _runs_flag(runs: str) -> str:
    """' --runs DIR' when the runs are not in the default folder, so that advice can be pasted as it stands."""
    return "" if str(runs) == "runs" else f" --runs {shlex.quote(str(runs))}"


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("journey", help="a journey name, or your own journey file (NAME.toml)")
    p.add_argument("--runs", default="runs", help="where the journey's runs are (default: runs)")
    p.add_argument("--all-steps", action="store_true", help="every step must meet every target, not only the last")
    p.set_defaults(func=cmd_check)


CHECK_HELP = "check a journey's committed run records against the targets (no training; needs no torch)"


class _CheckParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one sentence and status 2
        raise UsageError(f"{message} (see {self.prog} --help).")


def check_main(argv: list[str]) -> int:
    """`tinymnist check ARGS` with the standard library alone (what the `tinymnist` entry point runs for
    `check`, so that a CI machine needs no torch): parse, check, print; exit 0, 1 (a target missed, a record
    that disagrees with itself or with the journey) or 2 (bad input, a damaged record)."""
    parser = _CheckParser(prog="tinymnist check", description=CHECK_HELP)
    add_check_args(parser)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except TinyMnistError as e:
        print(f"tinymnist: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinymnist: interrupted", file=sys.stderr)
        return 130


def add_journey_commands(sub: argparse._SubParsersAction) -> None:
    from tinymnist.cli.common import add_run_args, add_seed_args, positive_int

    p = sub.add_parser("init", help="write a starter: a model file and a journey file to edit (the original's steps)")
    p.add_argument("dir", help="directory to write models.py, journey.toml, README.md, a CI workflow and "
                                ".gitignore into")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("report", help="run (or reuse) a journey's four steps and write report.md with figures")
    p.add_argument("journey", help="a journey name (see `tinymnist steps`), or your own journey file (NAME.toml)")
    add_seed_args(p, 1, "seeds per step, from each recipe's own seed upwards (default 1)")
    p.add_argument("--out", default="report", help="directory for report.md and figures/")
    p.add_argument("--epochs", type=positive_int, help="a quick pass: train every step this many epochs instead of "
                                                      "its recipe's (the report says so)")
    add_run_args(p, overrides=False)
    p.set_defaults(func=cmd_report)

    add_check_args(sub.add_parser("check", help=CHECK_HELP))
