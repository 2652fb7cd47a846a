"""How a model is named, read without importing torch: a registered name, ``FAMILY:key=value,...`` or a user's
``FILE.py:NAME`` (and its file's SHA-256). Reading a run record needs these; building a model (models/) does
not live here."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tinymnist.errors import UsageError


def format_args(args: dict[str, object]) -> str:
    """``{'w': '8.16', 'pool': 2}`` -> ``w=8.16,pool=2`` (floats in their shortest exact form)."""
    return ",".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items())


def parse_args(text: str, where: str) -> dict[str, object]:
    """``w=8.16,pool=2,lr=0.1`` -> ``{'w': '8.16', 'pool': 2, 'lr': 0.1}``: whole numbers, numbers, else text."""
    args: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise UsageError(f"{where}: {item!r} is not key=value; write arguments like w=8.16.24,pool=2.")
        for kind in (int, float):
            try:
                args[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            args[key] = {"True": True, "False": False}.get(value, value)
    return args



def is_user_model(name: str) -> bool:
    """Whether ``name`` names a model in a user's file (``FILE.py:NAME``) rather than a registered one."""
    return ".py:" in name



def split_user_model(name: str) -> tuple[Path, str, dict[str, object] | None]:
    """``FILE.py:NAME`` -> (FILE, NAME, None); ``FILE.py:SPACE:key=value,...`` (a model a search space built for
    the trial parameters given) -> (FILE, SPACE, parameters)."""
    path, _, rest = name.rpartition(".py:")
    attr, colon, args = rest.partition(":")
    if not attr.isidentifier():
        raise UsageError(f"{name!r}: after the colon comes the name of a class or function in the file, like "
                         f"my_models.py:Net.")
    return Path(path + ".py"), attr, parse_args(args, name) if colon else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
