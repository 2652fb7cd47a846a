"""docs/performance.md from the benchmarks' JSON files: the fixed prose of docs/templates/performance.md, then
each result rendered by its own benchmark's section renderer.

    python bench/performance_doc.py docs/performance.md bench/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_before_after import render_before_after
from bench_floor import render_floor
from bench_grad_error import render_grad_error
from bench_matrix import render_matrix
from bench_serve import render_serve
from bench_stacked import render_stacked
from bench_startup import render_startup
from bench_train import render_parallel, render_profile, render_train

ROOT = Path(__file__).resolve().parent.parent


def render(results: list[dict]) -> str:
    """docs/performance.md from benchmark JSON files."""
    lines = (ROOT / "docs" / "templates" / "performance.md").read_text().split("\n")
    order = {None: 0, "before_after": 1, "matrix": 2, "floor": 3, "grad_error": 4, "profile": 5, "parallel": 6,
             "stacked": 7, "serve": 8, "startup": 9}
    renderers = {"parallel": render_parallel, "profile": render_profile, "serve": render_serve,
                 "matrix": render_matrix, "floor": render_floor, "stacked": render_stacked,
                 "grad_error": render_grad_error, "startup": render_startup, "before_after": render_before_after}
    for r in sorted(results, key=lambda r: (order[r.get("kind")], bool(r.get("overrides")),
                                            -r["threads"] if r.get("kind") == "matrix" else 0)):
        if r.get("kind") in renderers:
            lines += renderers[r["kind"]](r)
            continue
        lines += render_train(r)
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    results = [json.loads(Path(p).read_text()) for p in sorted(sys.argv[2:])]
    Path(sys.argv[1]).write_text(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
