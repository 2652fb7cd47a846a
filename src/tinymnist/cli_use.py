"""The commands that use a trained run (`eval`, `predict`, `export`, `serve`): parse, call the library
(inference.py, loading.py, serve.py; ONNX and FastAPI are imported only when their command runs), print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_common import EXIT_CHECK, EXIT_OK, add_data_args, add_trust_arg, load_data, positive_int, say
from .errors import UsageError
from .records import RunRecord


def cmd_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

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

    from .inference import predict_images, preprocess
    from .loading import load_model

    loaded = load_model(RunRecord(args.run), args.trust_remote_code)
    images = np.stack([preprocess(Path(p)) for p in args.images])
    probs = predict_images(loaded, images)
    results = []
    for path, p in zip(args.images, probs, strict=True):
        values, classes = p.topk(3)
        results.append({"image": path, "top3": [{"digit": int(c), "probability": round(float(v), 6)}
                                                for v, c in zip(values, classes, strict=True)]})
    if args.show_input:
        from .report import digit_grid

        captions = [f"{Path(r['image']).name}: {r['top3'][0]['digit']}" for r in results]
        digit_grid(images, captions, Path(args.show_input), "what the model saw (28x28, as MNIST)",
                   columns=min(len(images), 6))
    if args.json:
        say(json.dumps(results, indent=2))
        return EXIT_OK
    for r in results:
        say(f"{r['image']}: " + "  ".join(f"{t['digit']} ({100 * t['probability']:.1f}%)" for t in r["top3"]))
    if args.show_input:
        say(f"wrote {args.show_input}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the [onnx] extra: pip install \"tinymnist[onnx]\"") from None
    from .inference import export_onnx, onnx_parity
    from .loading import load_model

    loaded = load_model(RunRecord(args.run), args.trust_remote_code)
    out = Path(args.onnx)
    export_onnx(loaded.model, out)
    data = load_data(args)
    parity = onnx_parity(loaded, out, data.test_images[:1000], data.test_labels[:1000])
    say(f"wrote {out} (input 'image' (N, 1, 28, 28) normalized with mean {loaded.mean:.4f} std {loaded.std:.4f}; "
        f"output 'log_probs' (N, 10))",
        f"parity on {parity['images']} test images against onnxruntime: "
        f"{'identical' if parity['same_predictions'] else 'DIFFERENT'} predictions, "
        f"max |log-prob difference| {parity['max_abs_diff']:.2e}")
    ok = parity["same_predictions"] and parity["max_abs_diff"] < 1e-4
    return EXIT_OK if ok else EXIT_CHECK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ImportError:
        raise UsageError("serving needs the [serve] extra: pip install \"tinymnist[serve]\"") from None
    RunRecord(args.run).require()
    say(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    serve(args.run, args.host, args.port, args.data_dir, args.trust_remote_code)
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

    p = sub.add_parser("export", help="export a run's model to ONNX and check it against onnxruntime")
    p.add_argument("run", help="a run directory")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    add_trust_arg(p)
    add_data_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a page to draw a digit on and an HTTP API, for one trained run")
    p.add_argument("run", help="a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", help="MNIST files for the test-digit button (default: $TINYMNIST_DATA, else "
                                      "./data/MNIST/raw; never downloaded)")
    add_trust_arg(p)
    p.set_defaults(func=cmd_serve)
