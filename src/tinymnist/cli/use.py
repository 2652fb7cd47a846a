"""The commands that use a trained run (`eval`, `predict`, `export`, `serve`): parse, call the library
(use/ and runs/loading.py; ONNX and FastAPI are imported only when their command runs), print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinymnist.cli.common import (
    EXIT_CHECK,
    EXIT_OK,
    EXIT_USAGE,
    add_data_args,
    add_trust_arg,
    load_data,
    say,
)
from tinymnist.errors import UsageError
from tinymnist.runs.records import RunRecord


def cmd_eval(args: argparse.Namespace) -> int:
    from tinymnist.use.inference import evaluate_run

    run = RunRecord(args.run).require(finished=True)  # before reading MNIST: a wrong path is the likelier mistake
    result = evaluate_run(run, load_data(args), args.device, args.trust_remote_code)
    say(f"test loss {result['test_loss']:.4f}, test accuracy {result['test_acc']:.2f}%",
        "per class: " + "  ".join(f"{d}:{a:.2f}" for d, a in enumerate(result["per_class"])))
    if result["test_acc"] == result["recorded"]:
        say(f"matches the recorded final test accuracy ({result['recorded']:.2f}%)")
        return EXIT_OK
    say(f"DIFFERS from the recorded final test accuracy ({result['recorded']:.2f}%): another device or "
        f"library version computes slightly differently")
    return EXIT_CHECK


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from tinymnist.runs.loading import load_model
    from tinymnist.use.inference import predict_images, preprocess

    loaded = load_model(RunRecord(args.run), args.trust_remote_code)
    good, prepared, failed = [], [], []
    for path in args.images:  # every readable image is answered; each bad one is named, and the exit says so
        try:
            prepared.append(preprocess(Path(path)))
            good.append(path)
        except UsageError as e:
            failed.append(str(e))
    for message in failed:
        print(f"tinymnist: error: {message}", file=sys.stderr)
    if not good:
        return EXIT_USAGE
    images = np.stack(prepared)
    probs = predict_images(loaded, images)
    results = []
    for path, p in zip(good, probs, strict=True):
        values, classes = p.topk(3)
        results.append({"image": path, "top3": [{"digit": int(c), "probability": round(float(v), 6)}
                                                for v, c in zip(values, classes, strict=True)]})
    if args.show_input:
        from tinymnist.reports.report import digit_grid

        captions = [f"{Path(r['image']).name}: {r['top3'][0]['digit']}" for r in results]
        digit_grid(images, captions, Path(args.show_input), "what the model saw (28x28, as MNIST)",
                   columns=min(len(images), 6))
    if args.json:
        say(json.dumps(results, indent=2))
    else:
        for r in results:
            say(f"{r['image']}: " + "  ".join(f"{t['digit']} ({100 * t['probability']:.1f}%)" for t in r["top3"]))
        if args.show_input:
            say(f"wrote {args.show_input}")
    return EXIT_USAGE if failed else EXIT_OK


def _need_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the [onnx] extra: pip install \"tinymnist[onnx]\"") from None


def _writable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output that cannot be written: a folder given for a file, a folder that does
    not exist, or one this user cannot write in (tried with a temporary file: permissions alone miss a
    read-only file system)."""
    import tempfile

    if flag != "--web" and path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name in it, like {path / 'model.onnx'}.")
    where = path if flag == "--web" and path.is_dir() else path.parent
    while flag == "--web" and not where.exists() and where != where.parent:
        where = where.parent  # --web creates the folders it needs
    if not where.is_dir():
        raise UsageError(f"{flag} {path}: the folder {where} does not exist; create it or give another path.")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".tinymnist-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {where} ({e.strerror}); give a path in a folder you "
                         f"can write.") from None


def _int8_path(args: argparse.Namespace) -> Path:
    """--int8 FILE, else beside --onnx F as F's name with .int8.onnx, else model.int8.onnx."""
    if args.int8:
        return Path(args.int8)
    if args.onnx:
        fp32 = Path(args.onnx)
        return fp32.with_name(f"{fp32.stem if fp32.suffix == '.onnx' else fp32.name}.int8.onnx")
    return Path("model.int8.onnx")


def cmd_export(args: argparse.Namespace) -> int:
    from tinymnist.runs.loading import load_model

    if not (args.onnx or args.int8 is not None or args.web):
        raise UsageError("say what to export: --onnx FILE, --int8 [FILE] and/or --web DIR.")
    if args.int8 is not None:
        args.int8 = str(_int8_path(args))
    # before any work: a refused export writes nothing
    for flag, value in (("--onnx", args.onnx), ("--int8", args.int8), ("--web", args.web)):
        if value:
            _writable(Path(value), flag)
    if args.web:
        from tinymnist.use.deploy import empty_folder

        empty_folder(Path(args.web))
    run = RunRecord(args.run).require(finished=True)
    loaded = load_model(run, args.trust_remote_code)
    ok = True
    if args.web:
        from tinymnist.use.deploy import export_web

        sizes = export_web(loaded, Path(args.web), run.summary().get("last_test_acc"))
        say(f"wrote {args.web}/: the draw-a-digit page, no server needed ({sum(sizes.values()) / 1024:.1f} KB: "
            + ", ".join(f"{name} {size / 1024:.1f} KB" for name, size in sizes.items()) + ")",
            f"open {Path(args.web) / 'index.html'} in a browser, or put the folder on any static host (GitHub "
            f"Pages: commit it under docs/ and choose 'Deploy from a branch', /docs, in Settings -> Pages)")
    if args.onnx or args.int8:
        ok = _export_onnx(args, loaded)
    return EXIT_OK if ok else EXIT_CHECK


def _export_onnx(args: argparse.Namespace, loaded: object) -> bool:
    """--onnx and --int8: write the files, print and (for int8) record what they weigh and score."""
    import tempfile

    _need_onnx()
    from tinymnist.use.deploy import CALIBRATION_IMAGES, compare_int8, quantize_int8
    from tinymnist.use.inference import export_onnx, model_inputs, onnx_parity

    data = load_data(args)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(args.onnx) if args.onnx else Path(tmp) / "fp32.onnx"
        export_onnx(loaded.model, fp32)
        parity = onnx_parity(loaded, fp32, data.held_out_images[:1000], data.held_out_labels[:1000])
        ok = parity["same_predictions"] and parity["max_abs_diff"] < 1e-4
        if args.onnx:
            say(f"wrote {fp32} (input 'image' (N, 1, 28, 28) normalized with mean {loaded.mean:.4f} std "
                f"{loaded.std:.4f}; output 'log_probs' (N, 10))",
                f"parity on {parity['images']} test images against onnxruntime: "
                f"{'identical' if parity['same_predictions'] else 'DIFFERENT'} predictions, "
                f"max |log-prob difference| {parity['max_abs_diff']:.2e}")
        if not args.int8:
            return ok
        inputs = model_inputs(loaded.mean, loaded.std)
        int8 = Path(args.int8)
        quantize_int8(fp32, int8, inputs(data.train_images[:CALIBRATION_IMAGES]).numpy())
        result = compare_int8(fp32, int8, inputs(data.held_out_images).numpy(), data.held_out_labels.numpy())
    result |= {"run": str(args.run), "model": loaded.name, "params": loaded.params,
               "calibration_images": CALIBRATION_IMAGES, "int8_file": str(int8)}
    record = int8.with_name(int8.name + ".json")
    try:
        record.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {record} ({e.strerror}).") from None
    say(f"wrote {int8}: int8 (static, per-channel weights, QDQ), {result['int8_bytes']:,} bytes against "
        f"{result['fp32_bytes']:,} in fp32",
        f"full test set ({result['images']:,} images): fp32 {result['fp32_test_acc']:.2f}%, int8 "
        f"{result['int8_test_acc']:.2f}% ({result['int8_test_acc'] - result['fp32_test_acc']:+.2f} points); "
        f"the same digit for {100 * result['agreement']:.2f}% of images",
        f"recorded in {record}")
    return ok


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from tinymnist.use.serve import bind, create_app, serve
    except ImportError:
        raise UsageError("serving needs the [serve] extra: pip install \"tinymnist[serve]\"") from None
    RunRecord(args.run).require()
    sock = bind(args.host, args.port)  # before loading anything: a port in use is the likelier mistake
    try:
        app = create_app(args.run, args.data_dir, args.trust_remote_code, [args.host, *args.allow_host])
        say(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
        serve(app, sock)
    finally:
        sock.close()
    return EXIT_OK


def add_use_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="reload a run's weights and recompute its test accuracy, per class too")
    p.add_argument("run", help="a run directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_trust_arg(p)
    add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify photos or scans of digits (PNG/JPEG, any size)")
    p.add_argument("run", help="a run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show-input", metavar="PNG", help="write the 28x28 images the model actually saw")
    add_trust_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a run's model as ONNX (fp32 or int8) or as a page that needs no server")
    p.add_argument("run", help="a run directory")
    p.add_argument("--onnx", metavar="FILE", help="write the fp32 ONNX file, checked against onnxruntime")
    p.add_argument("--int8", metavar="FILE", nargs="?", const="",
                   help="write an int8 ONNX file (default: beside --onnx F as F.int8.onnx, else model.int8.onnx) "
                        "and FILE.json with its size and full-test-set accuracy against fp32")
    p.add_argument("--web", metavar="DIR", help="write the draw-a-digit page as a static folder that runs the model "
                                                "in the browser (a new or empty folder)")
    add_trust_arg(p)
    add_data_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a page to draw a digit on and an HTTP API, for one trained run")
    p.add_argument("run", help="a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a name the Host header may give besides localhost, 127.0.0.1, ::1 and --host (for a "
                        "server reached by name; '*' answers any); repeatable")
    p.add_argument("--data-dir", help="MNIST files for the test-digit button (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw; never downloaded)")
    add_trust_arg(p)
    p.set_defaults(func=cmd_serve)
