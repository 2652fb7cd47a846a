"""Shared fixtures: synthetic IDX files written by the tests, and the real MNIST when TINYMNIST_DATA is set."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tinymnist.data import MNIST, load_mnist
from tinymnist.runs.records import RunRecord, run_dir
from tinymnist.runs.runner import create_run, train_run
from tinymnist.training.executor import execute
from tinymnist.training.recipes import Options, Recipe, RunSpec

CPU = Options(device="cpu")


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file (unsigned bytes) holding ``array``."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class c lights a bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for c in range(10):
        row = 3 + 2 * c
        images[labels == c, row:row + 3, 4:24] = 255
    return images, labels


def write_mnist(directory: Path, n_train: int, n_test: int, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"train": synthetic_digits(n_train, 0), "t10k": synthetic_digits(n_test, 1)}
    for split, (images, labels) in parts.items():
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            raw = idx_bytes(array)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
            else:
                (directory / name).write_bytes(raw)
    return directory


@pytest.fixture(scope="session")
def full_synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic files with MNIST's real counts (60,000 / 10,000), for the CLI."""
    return write_mnist(tmp_path_factory.mktemp("mnist-full"), 60_000, 10_000)


@pytest.fixture(scope="session")
def real_mnist() -> MNIST:
    where = os.environ.get("TINYMNIST_DATA")
    if not where:
        pytest.skip("TINYMNIST_DATA is not set: the real MNIST is not available")
    return load_mnist(where, allow_download=False)


@pytest.fixture(scope="session")
def mnist_dir(full_synthetic_dir: Path) -> Path:
    """The directory a CLI test passes as --data-dir: the real MNIST when available, else synthetic files of
    the same sizes."""
    return Path(os.environ.get("TINYMNIST_DATA") or full_synthetic_dir)


@pytest.fixture(scope="session")
def small_mnist(mnist_dir: Path) -> MNIST:
    """The first 2,000 training and 1,000 test images of ``mnist_dir``."""
    return load_mnist(mnist_dir, allow_download=False).subset(2000, 1000)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def start_run(root: Path, step: str, recipe: Recipe, data: MNIST, options: Options = CPU) -> RunRecord:
    """A new run of ``recipe`` under ``root``, created as the CLI creates one (not trained yet)."""
    run = RunRecord(run_dir(root, step, recipe.seed))
    create_run(run, RunSpec(recipe=recipe, options=options, step=step), data)
    return run


def fit(recipe: Recipe, data: MNIST, options: Options = CPU) -> list[dict]:
    """The per-epoch history of ``recipe`` trained on ``data`` by the executor, with no sink."""
    return execute(RunSpec(recipe=recipe, options=options), data).history


@pytest.fixture(scope="session")
def trained_run(small_mnist: MNIST, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An original_step4 run trained in the test session for 2 epochs on the small data (real or synthetic)."""
    run = start_run(tmp_path_factory.mktemp("runs"), "original_step4",
                    Recipe(model="original_step4", epochs=2, seed=0), small_mnist)
    train_run(run, small_mnist)
    return run.path


@contextlib.contextmanager
def serving(run: Path, *args: str) -> Iterator[str]:
    """`tinymnist serve RUN` as a real server on a free loopback port; yields its URL once /healthz answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", "serve", str(run), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's postgresql package) on a free loopback port, owned by the
    `postgres` user when the tests run as root (the server refuses root); stopped and removed afterwards."""
    import glob
    import shutil
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="tinymnist-pg-"))  # under /tmp: pytest's own tmp is root's alone
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        root.chmod(0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
       f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tinymnist")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/tinymnist"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
