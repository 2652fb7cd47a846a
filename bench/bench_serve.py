"""Load test of `tinymnist serve` on loopback: N requests (POST /predict with a drawn digit) from C concurrent
clients after a warm-up; requests per second, latency percentiles, errors, and the server's RSS over time.

    python bench/bench_serve.py runs/compact_step4/seed-1 --json bench/results/cpu-serve.json
    python bench/performance_doc.py docs/performance.md bench/results/*.json   # regenerate the doc

Bounded: a fixed number of requests, each with a timeout, to 127.0.0.1 only; it stops by itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from tinymnist.machine import cpu_name


def digit_png() -> bytes:
    """A 7 drawn with a thick stroke on white, as the page sends it."""
    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).line([(75, 55), (205, 55), (125, 235)], fill=0, width=18, joint="curve")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fire(url: str, body: bytes, count: int, clients: int, on_done: object = None) -> tuple[list[float], list[int]]:
    """``count`` POST /predict from ``clients`` threads; (latencies in seconds, status codes)."""
    latencies, statuses, lock = [], [], threading.Lock()
    local = threading.local()

    def one(_: int) -> None:
        client = getattr(local, "client", None) or httpx.Client(timeout=30)
        local.client = client
        start = time.perf_counter()
        try:
            status = client.post(f"{url}/predict", content=body, headers={"Content-Type": "image/png"}).status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            latencies.append(time.perf_counter() - start)
            statuses.append(status)
            if on_done:
                on_done(len(statuses))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))
    return latencies, statuses


def measure(run: str, requests: int = 2000, clients: int = 16, warmup: int = 200) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tinymnist", "serve", run, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = digit_png()
        _, warm = fire(url, body, warmup, clients)
        rss_warm = rss_mb(server.pid)
        samples: list[float] = []

        def sample(done: int) -> None:  # RSS while requests 1,000-2,000 are served
            if done >= requests // 2 and done % 50 == 0:
                samples.append(rss_mb(server.pid))

        start = time.perf_counter()
        latencies, statuses = fire(url, body, requests, clients, sample)
        wall = time.perf_counter() - start
        samples.append(rss_mb(server.pid))
    finally:
        server.terminate()
        server.wait(10)
    ordered = sorted(latencies)
    return {"kind": "serve", "run": run, "requests": requests, "clients": clients, "warmup": warmup,
            "errors": sum(s != 200 for s in statuses) + sum(s != 200 for s in warm),
            "requests_per_second": requests / wall, "wall_seconds": wall,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "rss_after_warmup_mb": rss_warm, "rss_samples_mb": samples,
            "rss_max_drift_mb": max(abs(s - rss_warm) for s in samples),
            "cpu": cpu_name(), "threads": os.cpu_count(), "command": "python " + " ".join(sys.argv)}



def render_serve(r: dict) -> list[str]:
    drift = r["rss_max_drift_mb"]
    return ["## Serving: `tinymnist serve` under load on loopback", "",
            f"- machine: {r['cpu']}; the server and the {r['clients']} client threads share its cores",
            f"- command: `{r['command']}` (bench/bench_serve.py)",
            f"- run served: `{r['run']}`", "",
            "| requests | concurrent clients | errors | requests/s | p50 latency | p99 latency | RSS after warm-up "
            "| largest RSS change, requests 1,000-2,000 |", "|---|---|---|---|---|---|---|---|",
            f"| {r['requests']:,} (after {r['warmup']} warm-up) | {r['clients']} | {r['errors']} | "
            f"{r['requests_per_second']:.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
            f"{r['rss_after_warmup_mb']:.0f} MB | {drift:.1f} MB |", "",
            f"- no errors: **{'met' if r['errors'] == 0 else 'missed'}**; RSS within 20 MB of its value after the "
            f"warm-up: **{'met' if drift <= 20 else 'missed'}** ({drift:.1f} MB)", ""]

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    result = measure(args.run, args.requests, args.clients, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["errors"] == 0 and result["rss_max_drift_mb"] <= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
