"""The search's commands (`search`, `search-export`, `search-confirm`, `search-doc`): parse, call the library
(search/, reports/search_doc.py; Optuna is imported only when a command runs), print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinymnist.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_run_args,
    add_seed_args,
    add_trust_arg,
    count_int,
    load_data,
    parse_seeds,
    positive_int,
    recipe_overrides,
    run_options,
    say,
    seeds_shown,
)
from tinymnist.errors import UsageError, counted
from tinymnist.reports.folds import BASELINE as FOLD_BASELINE
from tinymnist.reports.render import over_seeds_lines
from tinymnist.search.analysis import SCORED
from tinymnist.settings import DESIGN, SPACES
from tinymnist.targets import LAST_K, MAX_EPOCHS, fresh_seeds
from tinymnist.training.recipes import RunSpec

DEFAULT_STORAGE = "sqlite:///search.db"
NAMED_SPACE = ("the study's own space file, when it has one: the study names it, but only a file you name here "
               "(or --trust-remote-code) is run")


def search_config(args: argparse.Namespace) -> object:
    from tinymnist.search.space import SearchConfig

    try:
        epochs = tuple(sorted({int(e) for e in args.epochs.split(",")}))
    except ValueError:
        raise UsageError(f"--epochs {args.epochs!r} must be whole numbers separated by commas, like 6,8,10.") \
            from None
    if not epochs or not 1 <= epochs[0] <= epochs[-1] <= MAX_EPOCHS:
        raise UsageError(f"--epochs {args.epochs!r}: each epoch count must be from 1 to {MAX_EPOCHS}.")
    return SearchConfig(max_params=args.max_params, space=args.space, epochs=epochs, validation=args.validation,
                        train_size=args.subset, seed=args.seed, last_k=min(LAST_K, epochs[0]),
                        precision=args.precision, score=args.score, design=args.design)


def cmd_search(args: argparse.Namespace) -> int:
    from tinymnist.reports.render import trial_line
    from tinymnist.search.space import probe_space
    from tinymnist.search.study import counts, shown_url
    from tinymnist.search.workers import search

    config = search_config(args)
    probe_space(config)  # a budget below the space is refused before anything is said or written
    say(f"study {args.study!r} in {shown_url(args.storage)}: {args.trials} trained trials, {args.workers} "
        f"worker(s) here; models of at most {config.max_params:,} parameters, scored on the last "
        f"{config.validation:,} training images (the test set is not read).")
    study = search(args.storage, args.study, config, args.trials, args.workers, args.heartbeat, args.data_dir,
                   on_trial=lambda t: say(trial_line(t)), on_note=lambda m: say(f"note: {m}"))
    c = counts(study)
    say(f"study {args.study!r}: {c['complete']} complete, {c['pruned']} pruned ({c['trained']} trained), "
        f"{c['fail']} failed, {c['running']} running, {c['waiting']} waiting.")
    if c["complete"]:
        best = study.best_trial
        say(f"best: trial {best.number}, {SCORED[config.score]} of the last epochs {best.value:.2f}% on validation, "
            f"{best.user_attrs['params']:,} params, {best.user_attrs['model']}")
    return EXIT_OK



def cmd_search_rescore(args: argparse.Namespace) -> int:
    from tinymnist.reports.render import trial_line
    from tinymnist.search.analysis import by_recipe
    from tinymnist.search.study import export, shown_url
    from tinymnist.search.workers import rescore

    text = args.seeds if args.seeds is not None else ("" if args.folds > 1 else "2,3,4")
    try:
        seeds = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r} must be whole numbers separated by commas, like 2,3,4.") from None
    if not seeds and args.folds < 2:
        raise UsageError("--seeds names no seed; give further seeds (like 2,3,4) or --folds K (2 or more).")
    what = [f"seeds {', '.join(map(str, seeds))}"] * bool(seeds) + \
        [f"folds 1-{args.folds - 1} of the training files"] * (args.folds > 1)
    say(f"study {args.study!r} in {shown_url(args.storage)}: its {args.top} best screened recipes on "
        f"{' and '.join(what)} (validation split; the test set is not read).")
    study, added, joined = rescore(args.storage, args.study, args.top, seeds, args.workers, args.heartbeat,
                                   args.data_dir, on_trial=lambda t: say(trial_line(t)),
                                   on_note=lambda m: say(f"note: {m}"), space=args.space,
                                   trust=args.trust_remote_code, folds=args.folds)
    if not added:
        say("every one of those recipe and seed pairs was already in the study: nothing to add"
            + ("; the trials it had waiting were trained here, with its other workers." if joined else "."))
    recipes = by_recipe(export(study))
    say("", "recipes by mean level of the last epochs over their seeds (validation):")
    for g in recipes:
        if len(g["levels"]) > 1:
            levels = " ".join(f"{lv:.2f}" for _, lv in sorted(g["levels"].items()))
            say(f"  {g['mean']:.3f} ± {g['sd']:.3f}  {len(g['levels'])} seeds ({levels})  "
                f"{g['n_params']:>6,} params  trial {g['screen']}  {g['model']}")
    if any(len(g["folds"]) > 1 for g in recipes):
        say("", "recipes by mean level of the last epochs over folds (seed of the study; fold 0 is its screen):")
        for g in sorted((g for g in recipes if len(g["folds"]) > 1), key=lambda g: -g["fold_mean"]):
            levels = " ".join(f"{lv:.2f}" for lv in g["folds"].values())
            say(f"  {g['fold_mean']:.3f} ± {g['fold_sd']:.3f}  {len(g['folds'])} folds ({levels})  "
                f"{g['n_params']:>6,} params  trial {g['screen']}  {g['model']}")
    return EXIT_OK


def cmd_search_export(args: argparse.Namespace) -> int:
    from tinymnist.files import write_atomic
    from tinymnist.search.study import export, open_storage, open_study

    data = export(open_study(open_storage(args.storage), args.study))
    out = Path(args.out or f"evidence/studies/{args.study}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(data, indent=1) + "\n").encode())
    say(f"wrote {out}: {len(data['trials'])} trials")
    return EXIT_OK


def cmd_search_confirm(args: argparse.Namespace) -> int:
    from tinymnist.search.analysis import read_exports
    from tinymnist.search.space import check_named
    from tinymnist.search.study import trial_recipe

    exported = read_exports([Path(args.export)])[0]
    recipe = trial_recipe(exported, args.trial)
    check_named(recipe.model, args.space, args.trust_remote_code, exported["study"])
    tuned = (exported["config"]["seed"],)  # every trial trained this seed: fresh seeds skip it
    seeds = parse_seeds(args, fresh_seeds(args.seeds, tuned))
    step = f"search/{exported['study']}/trial-{args.trial}"  # its runs' directory: RUNS/search/STUDY/trial-N
    overrides = recipe_overrides(args)  # a lever measured on the trial's recipe (its runs under another --runs)
    spec = RunSpec(recipe=recipe.with_overrides(**overrides), options=run_options(args), step=step, tuned_seeds=tuned,
                   overrides=overrides or None,
                   origin={"study": exported["study"], "trial": args.trial, "export": args.export})
    data = load_data(args, args.subset)
    say(f"trial {args.trial} of study {exported['study']!r}: {recipe.model}, on the full training set, judged on "
        f"the test set")
    last_k = exported["config"]["last_k"]
    figures = seeds_shown(spec, seeds, Path(args.runs), data, last_k, args.jobs, args.trust_remote_code)
    if figures is None:
        return EXIT_INTERRUPTED
    say("", f"{step}: {figures['params']:,} params, {counted(spec.recipe.epochs, 'epoch')}, "
            f"{counted(len(seeds), 'seed')}",
        *over_seeds_lines(figures, tuned))
    return EXIT_OK


def cmd_search_doc(args: argparse.Namespace) -> int:
    from tinymnist.reports.search_doc import search_markdown
    from tinymnist.search.analysis import read_exports

    out, figure = Path(args.out), Path(args.figure)
    command = (f"tinymnist search-doc {' '.join(args.exports)} --runs {args.runs} --out {args.out} "
               f"--figure {args.figure}" + (f" --bar {args.bar}" if args.bar else "")
               + (f" --folds {args.folds} --baseline {args.baseline}" if args.folds else ""))
    text = search_markdown(read_exports([Path(p) for p in args.exports]), Path(args.runs), figure, out, command,
                           args.bar, Path(args.folds) if args.folds else None, args.baseline)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    say(f"wrote {out} and {figure}")
    return EXIT_OK


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    _add_search(sub)
    _add_search_rescore(sub)
    _add_search_export(sub)
    _add_search_confirm(sub)
    _add_search_doc(sub)


def _add_search(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist search`."""
    p = sub.add_parser("search", help="an Optuna study over models and recipes, scored on a validation split")
    p.add_argument("--max-params", type=positive_int, required=True, help="models above this are not trained")
    p.add_argument("--space", default=SPACES[0],
                   help="builtin-2 (default: the tiny family with a width per layer and a second pool, and every "
                        "setting of the one-cycle recipe), builtin (the space of studies before 0.4.0), or your "
                        "own as FILE.py:NAME, a function of an Optuna trial returning (model, recipe settings)")
    p.add_argument("--trials", type=positive_int, default=60, help="trained trials the study should reach, "
                                                                   "counting other workers' (default 60)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes here (default 1)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"any SQLAlchemy URL (default {DEFAULT_STORAGE}); several hosts: postgresql+psycopg://...")
    p.add_argument("--study", default="search", help="study name: created, or resumed/joined (default search)")
    p.add_argument("--epochs", default="15", help="epoch counts the built-in space chooses from, e.g. 6,8,10 "
                                                  "(default 15)")
    p.add_argument("--validation", type=positive_int, default=10_000,
                   help="the last N training images score the trials (default 10000)")
    p.add_argument("--subset", type=positive_int, help="train on the first N of the other training images")
    p.add_argument("--seed", type=int, default=1, help="the seed every trial trains (default 1)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--score", default="level", choices=list(SCORED),
                   help="a trial's value: level, the mean of its last K validation epochs (default), or worst, "
                        "their lowest")
    p.add_argument("--design", type=count_int, default=DESIGN,
                   help=f"trials of the initial design a new study starts with (built-in space; default {DESIGN}, "
                        f"0: none)")
    p.add_argument("--heartbeat", type=positive_int, default=10,
                   help="seconds between a trial's heartbeats; 3 missed and it is failed and retried (default 10)")
    p.add_argument("--data-dir", help="directory with the MNIST training files (the test files are not needed)")
    p.set_defaults(func=cmd_search)


def _add_search_rescore(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist search-rescore`."""
    p = sub.add_parser("search-rescore", help="train a study's best screened recipes on further seeds and rank "
                                              "them by their mean level (validation)")
    p.add_argument("--study", default="search", help="study name (default search)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
    p.add_argument("--top", type=positive_int, default=5, help="best screened recipes to re-score (default 5)")
    p.add_argument("--seeds", help="further seeds each is trained on (default 2,3,4; none with --folds)")
    p.add_argument("--folds", type=positive_int, default=1, metavar="K",
                   help="also train each on folds 1 to K-1 of the training files at the study's seed (fold k "
                        "holds out its own --validation images; fold 0, the study's split, is the screen) and "
                        "rank by the mean level over the K folds")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes here (default 1)")
    p.add_argument("--heartbeat", type=positive_int, default=10, help="seconds between a trial's heartbeats")
    p.add_argument("--data-dir", help="directory with the MNIST training files (the test files are not needed)")
    p.add_argument("--space", metavar="FILE.py:NAME", help=NAMED_SPACE)
    add_trust_arg(p)
    p.set_defaults(func=cmd_search_rescore)


def _add_search_export(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist search-export`."""
    p = sub.add_parser("search-export", help="write a study as JSON (settings, every trial) for docs and audit")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
    p.add_argument("--study", default="search", help="study name (default search)")
    p.add_argument("--out", help="JSON file (default evidence/studies/STUDY.json)")
    p.set_defaults(func=cmd_search_export)


def _add_search_confirm(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist search-confirm`."""
    p = sub.add_parser("search-confirm", help="train a trial's recipe on the full training set over fresh seeds "
                                              "and judge it on the test set")
    p.add_argument("export", help="a study export (tinymnist search-export writes it)")
    p.add_argument("--trial", type=int, required=True, help="the trial's number")
    add_seed_args(p, 10, "fresh seeds: 1001 upwards, skipping the seed the trials trained (default 10)")
    p.add_argument("--jobs", type=positive_int, default=1, help="seeds trained at once, each in its own process")
    p.add_argument("--space", metavar="FILE.py:NAME", help=NAMED_SPACE)
    add_run_args(p)
    p.set_defaults(func=cmd_search_confirm)


def _add_search_doc(sub: argparse._SubParsersAction) -> None:
    """The parser of `tinymnist search-doc`."""
    p = sub.add_parser("search-doc", help="docs/search.md and its frontier figure from study exports and "
                                          "confirmation runs")
    p.add_argument("exports", nargs="+", help="study exports (evidence/studies/*.json)")
    p.add_argument("--runs", default="evidence/runs", help="where confirmation runs are (default evidence/runs)")
    p.add_argument("--out", default="docs/search.md", help="markdown file to write (default docs/search.md)")
    p.add_argument("--figure", default="docs/images/search-frontier.png", help="the frontier figure (PNG)")
    p.add_argument("--bar", metavar="STUDY", help="list each other study's trials that reach this study's best "
                                                  "validation score, fastest first")
    p.add_argument("--folds", metavar="FILE", help="a fold study's JSON lines (bench/front_study.py): the "
                                                   "cross-validated levels and their calibration")
    p.add_argument("--baseline", default=FOLD_BASELINE, metavar="STUDY:TRIAL",
                   help=f"the calibrated recipe the fold study's candidates are paired with (default {FOLD_BASELINE})")
    p.set_defaults(func=cmd_search_doc)
