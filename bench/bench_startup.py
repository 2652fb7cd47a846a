"""The command line's start-up: commands that only read records, timed in fresh processes, against the source
of an earlier commit.

    taskset -c 1 python bench/bench_startup.py --before d17e1a1 --json bench/results/cpu-startup.json

Each command runs ``--repeats`` times from this checkout's src/ and from ``--before``'s (exported with `git
archive` into a temporary directory), the two interleaved so that a busy machine slows both alike; the wall
time of each process, start to exit, as `python -m tinymnist ...` is timed; medians. Also recorded: whether
torch was in sys.modules when the command had run. Writes JSON; ``python bench/performance_doc.py ...``
renders it into docs/performance.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--version"], ["show", "tests/fixtures/run_0_2_0/run"], ["results", "--runs", "evidence/runs",
                                                                      "--out", os.devnull])
REPEATS = 10
# runs a command as `python -m tinymnist` does, then says whether torch was loaded
PROBE = ("import sys\nfrom tinymnist.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
         "    pass\nprint('torch' in sys.modules, file=sys.stderr)")


def export_src(commit: str, into: Path) -> Path:
    """``commit``'s src/ under ``into``."""
    archive = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into / "src"


def once(src: Path, argv: list[str]) -> tuple[float, bool]:
    """Seconds one process takes to run ``argv``, and whether it loaded torch."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed from {src}: {done.stderr.strip()}")
    return seconds, done.stderr.strip().splitlines()[-1] == "True"


def measure(before: str, repeats: int, out: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rows, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export_src(before, Path(tmp)), "after": ROOT / "src"}
        for argv in COMMANDS:
            times = {k: [] for k in trees}
            torch = {}
            for _ in range(repeats):
                for k, src in trees.items():
                    seconds, torch[k] = once(src, argv)
                    times[k].append(seconds)
            rows.append({"command": "tinymnist " + " ".join(argv).replace(os.devnull, "/dev/null"),
                         **{f"{k}_seconds": statistics.median(v) for k, v in times.items()},
                         **{f"{k}_torch": torch[k] for k in trees}})
    load.append(os.getloadavg()[0])
    from tinymnist.machine import cpu_name

    return {"kind": "startup", "before": before, "after": commit, "repeats": repeats, "cpu": cpu_name(),
            "python": platform.python_version(), "rows": rows,
            "load_average": load,  # the 1-minute load average before and after: how busy the machine was
            "command": f"taskset -c 1 python bench/bench_startup.py --before {before}"
                       + (f" --repeats {repeats}" if repeats != REPEATS else "") + f" --json {out}"}


def render_startup(r: dict) -> list[str]:
    """bench_startup.py's JSON: start-up of the commands that read records, before and after."""
    lines = ["## Start-up of the command line", "",
             f"- machine: {r['cpu']}, one core (`taskset -c 1`), Python {r['python']}",
             f"- command: `{r['command']}` (bench/bench_startup.py)",
             f"- wall time of a fresh process, start to exit, median of {r['repeats']}, the two sources interleaved: "
             f"`{r['before']}` (before) against `{r['after']}`, where `import tinymnist.cli.main` loads no torch",
             f"- the machine's 1-minute load average: {r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} "
             "after (other work shared the core: compare the two columns, which shared it alike, more than the "
             "seconds themselves)", "",
             "| command | before | after | after / before | torch loaded, before / after |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        torch = " / ".join("yes" if row[f"{k}_torch"] else "no" for k in ("before", "after"))
        lines.append(f"| `{row['command']}` | {row['before_seconds']:.2f} s | {row['after_seconds']:.2f} s | "
                     f"{row['after_seconds'] / row['before_seconds']:.2f} | {torch} |")
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    result = measure(args.before, args.repeats, args.json)
    text = json.dumps(result, indent=1) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
