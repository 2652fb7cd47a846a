"""Load test of `tinymnist serve` on loopback: N requests (POST /predict with a drawn digit) from C concurrent
clients after a warm-up; requests per second, latency percentiles, errors, and the server's RSS over time.
With --mix: N requests from C clients, a mix of ordinary digits and oversized images (at the pixel cap, over it);
the answers by kind, latency percentiles and the server's peak RSS (VmHWM).

    python bench/bench_serve.py runs/compact_step4/seed-1 --json bench/results/cpu-serve.json
    taskset -c 1 python bench/bench_serve.py RUN --mix --requests 500 --clients 32 \
        --json bench/results/cpu-serve-mix.json
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


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def oversized() -> dict[str, tuple[bytes, str]]:
    """Uploads that cost the server the most, with their content type: a digit as an RGBA PNG and as a noisy JPEG
    photo at the pixel cap (decoded), and a PNG over the cap (refused from its header)."""
    import numpy as np

    from tinymnist.use.inference import MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5)
    out = {}
    rgba = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    ImageDraw.Draw(rgba).line([(side // 4, side // 5), (3 * side // 4, side // 5), (side // 2, 4 * side // 5)],
                              fill=(0, 0, 0, 255), width=side // 14)
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG", compress_level=9)
    out["png-at-cap"] = (buffer.getvalue(), "image/png")
    noise = np.random.default_rng(0).integers(0, 40, (side * 3 // 4, side), dtype=np.uint8)
    photo = Image.fromarray(np.uint8(210) - noise).convert("RGB")  # paper with sensor noise
    ImageDraw.Draw(photo).line([(side // 3, side // 8), (side // 2, 5 * side // 8)], fill=(20, 20, 60),
                               width=side // 20)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    out["jpeg-at-cap"] = (buffer.getvalue(), "image/jpeg")
    buffer = io.BytesIO()
    Image.new("1", (side * 2, side * 2), 1).save(buffer, "PNG", optimize=True)
    out["png-over-cap"] = (buffer.getvalue(), "image/png")
    return out


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

def start_server(run: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tinymnist", "serve", run, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"the server did not start: {server.communicate(timeout=10)[1].decode()[-2000:]}")


MIX_SHARES = {"ordinary": 7, "png-at-cap": 1, "jpeg-at-cap": 1, "png-over-cap": 1}  # of every 10 requests


def measure_mix(run: str, requests: int = 500, clients: int = 32) -> dict:
    """``requests`` POST /predict from ``clients`` threads, kinds interleaved by MIX_SHARES; the answers by kind,
    latencies (all, and ordinary only) and the server's peak RSS."""
    bodies = {"ordinary": (digit_png(), "image/png"), **oversized()}
    order = [kind for kind, share in MIX_SHARES.items() for _ in range(share)]
    kinds = [order[i % len(order)] for i in range(requests)]
    results: list[tuple[str, int, float]] = []
    lock, local = threading.Lock(), threading.local()
    server, url = start_server(run)
    rss_start = rss_mb(server.pid)

    def one(i: int) -> None:
        client = getattr(local, "client", None) or httpx.Client(timeout=60)
        local.client = client
        body, content_type = bodies[kinds[i]]
        start = time.perf_counter()
        try:
            status = client.post(f"{url}/predict", content=body, headers={"Content-Type": content_type}).status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            results.append((kinds[i], status, time.perf_counter() - start))

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
        peak = rss_mb(server.pid, "VmHWM")
        alive = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(10)

    def p(latencies: list[float], q: float) -> float:
        ordered = sorted(latencies)
        return 1000 * ordered[int(q * (len(ordered) - 1))]

    answers = {kind: {} for kind in MIX_SHARES}
    for kind, status, _ in results:
        answers[kind][str(status)] = answers[kind].get(str(status), 0) + 1
    everything = [t for _, _, t in results]
    ordinary = [t for kind, status, t in results if kind == "ordinary"]
    return {"kind": "serve", "mix": MIX_SHARES, "run": run, "requests": requests, "clients": clients,
            "bytes": {kind: len(b) for kind, (b, _) in bodies.items()}, "answers": answers,
            "unexpected": sum(status not in (200, 422, 503) for _, status, _ in results),
            "alive_after": alive, "wall_seconds": wall, "p50_ms": p(everything, 0.5), "p99_ms": p(everything, 0.99),
            "ordinary_p99_ms": p(ordinary, 0.99), "rss_start_mb": rss_start, "rss_peak_mb": peak,
            "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "command": "python " + " ".join(sys.argv)}


RSS_BOUND_MB = 1024  # the server's peak under the mixed load (issue 41)


def render_mix(r: dict) -> list[str]:
    def answers(kind: str) -> str:
        return ", ".join(f"{n} x {status}" for status, n in sorted(r["answers"][kind].items()))

    lines = ["## Serving under a mix of ordinary and oversized images", "",
             f"- machine: {r['cpu']}, {r['cores']} core(s) for the server and the {r['clients']} client threads "
             f"together", f"- command: `{r['command']}` (bench/bench_serve.py)", f"- run served: `{r['run']}`", "",
             "| upload | share | bytes | answers (count x status) |", "|---|---|---|---|"]
    lines += [f"| {kind} | {share} in {sum(r['mix'].values())} | {r['bytes'][kind]:,} | {answers(kind)} |"
              for kind, share in r["mix"].items()]
    ok = r["unexpected"] == 0 and r["alive_after"]
    lines += ["", "| requests | concurrent clients | p50 latency | p99 latency | p99, ordinary digits | RSS at start | "
                  "peak RSS |", "|---|---|---|---|---|---|---|",
              f"| {r['requests']:,} | {r['clients']} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
              f"{r['ordinary_p99_ms']:.0f} ms | {r['rss_start_mb']:.0f} MB | {r['rss_peak_mb']:.0f} MB |", "",
              f"- every answer a 200, a 422 (over the pixel cap) or a 503 (busy), and the server still up: "
              f"**{'met' if ok else 'missed'}**; peak RSS under {RSS_BOUND_MB:,} MB: "
              f"**{'met' if r['rss_peak_mb'] < RSS_BOUND_MB else 'missed'}** ({r['rss_peak_mb']:.0f} MB)", ""]
    return lines


def render_serve(r: dict) -> list[str]:
    if "mix" in r:
        return render_mix(r)
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
    parser.add_argument("--mix", action="store_true", help="ordinary and oversized images; peak RSS")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    if args.mix:
        result = measure_mix(args.run, args.requests, args.clients)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        return 0 if result["unexpected"] == 0 and result["rss_peak_mb"] < RSS_BOUND_MB else 1
    result = measure(args.run, args.requests, args.clients, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["errors"] == 0 and result["rss_max_drift_mb"] <= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
