"""Deploying small, measured: int8 against fp32 over seeds, and the static page in headless Chromium.

    python bench/bench_deploy.py int8 RUN [RUN ...] --json bench/results/deploy/int8-compact_step4.json
    python bench/bench_deploy.py web RUN --json bench/results/deploy/web-compact_step4.json
    python bench/bench_deploy.py --doc docs/deploy.md      # renders from bench/results/deploy/*.json

`int8` runs `tinymnist export RUN --int8` for each run (full test set, calibration on training images) and keeps
what it records; `web` exports the page, opens it from disk in Debian's chromium (no server), and measures page
weight, time to a model ready to answer, one prediction's time, and agreement of the page's forward pass with
onnxruntime and PyTorch on every test image, and with `tinymnist predict` on drawn digits."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "deploy"
# Strokes on the 280 x 280 pad (the page test draws the same): a list of points per stroke.
DIGITS = {
    1: [[(140, 45), (140, 235)]],
    7: [[(75, 55), (205, 55), (125, 235)]],
    0: [[(140, 45), (90, 70), (75, 140), (90, 210), (140, 235), (190, 210), (205, 140), (190, 70), (140, 45)]],
    4: [[(170, 45), (80, 165), (210, 165)], [(170, 45), (170, 240)]],
}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    return path


def draw(page, strokes: list[list[tuple[int, int]]]) -> dict:  # a Playwright page
    """Draw ``strokes`` on the page's pad with the mouse; the page's pixels and ten probabilities."""
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()
    page.wait_for_function("window.tinymnistLast && document.body.dataset.answer !== undefined")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # the last stroke's
    last = page.evaluate("window.tinymnistLast")
    png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    return {"pixels": last["pixels"], "probabilities": last["probabilities"],
            "png": base64.b64decode(png.split(",", 1)[1])}


ONE_PREDICTION = """() => {  // the median of 20: preparing the drawn pad, then the forward pass
    const m = TinyMNIST.load(TINYMNIST_MODEL), pad = document.getElementById('pad');
    const px = pad.getContext('2d').getImageData(0, 0, 280, 280).data, times = [];
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      TinyMNIST.forward(m, TinyMNIST.prepare(px, 280, 280).pixels);
      times.push(performance.now() - t);
    }
    return times.sort((a, b) => a - b)[10]; }"""


def forward_all(page, images: np.ndarray) -> np.ndarray:
    """The page's own forward pass (TinyMNIST.forward with the exported model) on uint8 images (N, 28, 28)."""
    out = []
    for i in range(0, len(images), 500):
        chunk = base64.b64encode(images[i:i + 500].tobytes()).decode()
        values = page.evaluate("""b64 => { const m = TinyMNIST.load(TINYMNIST_MODEL);
            const px = Uint8Array.from(atob(b64), c => c.charCodeAt(0)), out = [];
            for (let i = 0; i < px.length / 784; i++)
              out.push(...TinyMNIST.forward(m, px.subarray(784 * i, 784 * (i + 1))));
            return out; }""", chunk)
        out.append(np.asarray(values, dtype=np.float32).reshape(-1, 10))
    return np.concatenate(out)


ORT_WEB_FILES = ("dist/ort.wasm.min.js", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm")


def ort_web_bytes(pack: Path) -> dict:
    """The files the smallest ONNX Runtime Web page loads (its wasm build), from `npm pack onnxruntime-web
    --json`'s listing of the package."""
    listing = json.loads(pack.read_text())[0]
    sizes = {f["path"]: f["size"] for f in listing["files"]}
    return {"package": listing["id"], "files": {name: sizes[name] for name in ORT_WEB_FILES}}


def measure_web(run: Path, data_dir: str | None) -> dict:
    from playwright.sync_api import sync_playwright

    from tinymnist.data import load_mnist
    from tinymnist.runs.loading import load_model
    from tinymnist.runs.records import RunRecord
    from tinymnist.training.engine import model_inputs
    from tinymnist.use.deploy import onnx_predictions
    from tinymnist.use.inference import export_onnx, predict_images, preprocess_bytes

    loaded = load_model(RunRecord(run))
    data = load_mnist(data_dir, allow_download=False)
    images = data.held_out_images.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "page"
        subprocess.run([sys.executable, "-m", "tinymnist", "export", str(run), "--web", str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(loaded.model, fp32)
        ort = onnx_predictions(fp32, model_inputs(loaded.mean, loaded.std)(data.held_out_images).numpy())
        torch_lp = predict_images(loaded, images).log().numpy()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"], headless=True)
            ready = []
            for _ in range(5):  # a fresh page each time: time from navigation to a model ready to answer
                page = browser.new_page(viewport={"width": 900, "height": 700})
                page.goto((folder / "index.html").as_uri())
                page.wait_for_function("document.body.dataset.ready !== undefined")
                ready.append(float(page.evaluate("document.body.dataset.ready")))
                page.close()
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto((folder / "index.html").as_uri())
            drawn = {digit: draw(page, strokes) for digit, strokes in DIGITS.items()}
            one = page.evaluate(ONE_PREDICTION)
            page_lp = forward_all(page, images)
            version = browser.version
            browser.close()
    drawn_rows = []
    for digit, d in drawn.items():
        pixels = np.asarray(d["pixels"], dtype=np.uint8).reshape(1, 28, 28)
        on_pixels = predict_images(loaded, pixels)[0].numpy()
        from_png = preprocess_bytes(d["png"])
        drawn_rows.append({"drawn": digit, "page": int(np.argmax(d["probabilities"])),
                           "predict_on_page_pixels": int(on_pixels.argmax()),
                           "max_prob_diff": float(np.abs(on_pixels - np.asarray(d["probabilities"])).max()),
                           "predict_on_png": int(predict_images(loaded, from_png[None])[0].argmax()),
                           "pixels_as_predict": int((from_png == pixels[0]).sum())})
    return {"kind": "web", "run": str(run), "model": loaded.name, "params": loaded.params, "sizes": sizes,
            "page_bytes": sum(sizes.values()), "chromium": version, "ready_ms": sorted(ready)[len(ready) // 2],
            "prediction_ms": one, "images": len(images),
            "agree_onnxruntime": int((page_lp.argmax(1) == ort.argmax(1)).sum()),
            "agree_torch": int((page_lp.argmax(1) == torch_lp.argmax(1)).sum()),
            "max_abs_diff_onnxruntime": float(np.abs(page_lp - ort).max()),
            "page_test_acc": 100 * float((page_lp.argmax(1) == data.held_out_labels.numpy()).mean()),
            "drawn": drawn_rows}


def measure_int8(runs: list[Path], data_dir: str | None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            out = Path(tmp) / f"{run.name}.int8.onnx"
            cmd = [sys.executable, "-m", "tinymnist", "export", str(run), "--int8", str(out), "--no-download"]
            subprocess.run(cmd + (["--data-dir", data_dir] if data_dir else []), check=True, stdout=subprocess.DEVNULL)
            record = json.loads(Path(str(out) + ".json").read_text())
            recipe = json.loads((run / "recipe.json").read_text())
            rows.append({k: v for k, v in record.items() if k not in ("run", "int8_file")}
                        | {"seed": recipe["recipe"]["seed"], "step": recipe["step"]})
    import onnxruntime

    return {"kind": "int8", "onnxruntime": onnxruntime.__version__, "rows": rows}


def render_int8(r: dict) -> list[str]:
    from tinymnist.targets import mean_interval

    rows = r["rows"]
    diffs = [x["int8_test_acc"] - x["fp32_test_acc"] for x in rows]
    mean, low, high = mean_interval(diffs)
    out = [f"### int8 against fp32: {rows[0]['step']} ({rows[0]['params']:,} parameters), {len(rows)} seeds", "",
           f"`tinymnist export RUN --int8` on each run (ONNX Runtime {r['onnxruntime']}: BatchNorm folded, QDQ, "
           f"per-channel int8 weights, uint8 activations calibrated on {rows[0]['calibration_images']:,} training "
           f"images); accuracy on the full test set ({rows[0]['images']:,} images).", "",
           "| seed | fp32 bytes | int8 bytes | fp32 test acc | int8 test acc | int8 - fp32 | same digit |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for x, d in zip(rows, diffs, strict=True):
        out.append(f"| {x['seed']} | {x['fp32_bytes']:,} | {x['int8_bytes']:,} | {x['fp32_test_acc']:.2f}% | "
                   f"{x['int8_test_acc']:.2f}% | {d:+.2f} | {100 * x['agreement']:.2f}% |")
    out += ["", f"Mean int8 - fp32: **{mean:+.3f} points** (95% interval {low:+.3f} to {high:+.3f}, t over "
                f"{len(rows)} seeds); int8 file {min(x['int8_bytes'] for x in rows):,}-"
                f"{max(x['int8_bytes'] for x in rows):,} bytes "
                f"({max(x['int8_bytes'] for x in rows) / 1024:.1f} KB at most).", ""]
    return out


def render_web(r: dict) -> list[str]:
    sizes = ", ".join(f"{k} {v / 1024:.1f} KB" for k, v in r["sizes"].items())
    out = [f"### The page with no server: {r['model']} ({r['params']:,} parameters)", "",
           f"- Page weight: **{r['page_bytes'] / 1024:.1f} KB** in all ({sizes}); nothing else is fetched.",
           f"- Headless Chromium {r['chromium']}, opened from disk (`file://`): a model ready to answer "
           f"{r['ready_ms']:.0f} ms after navigation (median of 5 fresh pages); one prediction (preparing the "
           f"280x280 pad and the forward pass) {r['prediction_ms']:.1f} ms (median of 20): the first answer comes "
           f"about {r['ready_ms'] + r['prediction_ms']:.0f} ms after the page starts loading.",
           f"- The page's forward pass on all {r['images']:,} test images: the same digit as onnxruntime on "
           f"{r['agree_onnxruntime']:,} and as PyTorch on {r['agree_torch']:,}; largest log-probability "
           f"difference from onnxruntime {r['max_abs_diff_onnxruntime']:.1e}; test accuracy in the page "
           f"{r['page_test_acc']:.2f}%.", "",
           "Digits drawn with the mouse (the page test's strokes): what the page answers, what `tinymnist "
           "predict` answers on the page's 28x28 pixels and on the canvas saved as PNG, and how many of the 784 "
           "pixels the page prepared as `predict` prepares them:", "",
           "| drawn | page | predict, page's pixels | largest probability difference | predict, PNG | "
           "pixels as predict |", "|---:|---:|---:|---:|---:|---:|"]
    for d in r["drawn"]:
        out.append(f"| {d['drawn']} | {d['page']} | {d['predict_on_page_pixels']} | {d['max_prob_diff']:.1e} | "
                   f"{d['predict_on_png']} | {d['pixels_as_predict']} of 784 |")
    if "onnxruntime_web" in r:
        ort = r["onnxruntime_web"]
        total = sum(ort["files"].values())
        out += ["", f"The alternative, ONNX Runtime Web ({ort['package']} from npm), needs "
                    + ", ".join(f"`{Path(k).name}` {v / 2**20:.2f} MB" for k, v in ort["files"].items())
                    + f" before its first answer: {total / 2**20:.1f} MB, {total / r['page_bytes']:.0f} times this "
                      f"whole page, to run {r['params']:,} weights."]
    return out + [""]


def render(results: list[dict], template: str) -> str:
    sections = {"int8": [], "web": []}
    for r in results:
        sections[r["kind"]] += render_int8(r) if r["kind"] == "int8" else render_web(r)
    return template.replace("{{int8}}", "\n".join(sections["int8"]).rstrip()).replace(
        "{{web}}", "\n".join(sections["web"]).rstrip())


def doc() -> str:
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    return render(results, (ROOT / "docs" / "templates" / "deploy.md").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["int8", "web"])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, help="where to write the measurement")
    parser.add_argument("--data-dir", help="MNIST files (default: $TINYMNIST_DATA)")
    parser.add_argument("--ort-pack", type=Path, help="web: `npm pack onnxruntime-web --json` output, to weigh the "
                                                     "alternative runtime")
    parser.add_argument("--doc", type=Path, help="render docs/deploy.md from bench/results/deploy/*.json")
    args = parser.parse_args()
    if args.what:
        if args.what == "int8":
            result = measure_int8(args.runs, args.data_dir)
        else:
            result = measure_web(args.runs[0], args.data_dir)
            if args.ort_pack:
                result["onnxruntime_web"] = ort_web_bytes(args.ort_pack)
        text = json.dumps(result, indent=2) + "\n"
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(text)
    if args.doc:
        args.doc.write_text(doc())
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
