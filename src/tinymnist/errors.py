"""The project's exception types: errors a user can cause, each carrying one clear sentence."""

from __future__ import annotations

import difflib


class TinyMnistError(Exception):
    """Base of every error a user can cause; the CLI prints it and exits with status 2."""


class DataError(TinyMnistError):
    """MNIST files missing, corrupt or inconsistent."""


class UsageError(TinyMnistError):
    """A bad name, number or path given by the user."""


class CheckpointError(TinyMnistError):
    """Weights or training state that cannot be loaded into the model they claim to be."""


class TrainingError(TinyMnistError):
    """Training cannot go on (for example, the loss became NaN)."""


def unknown_name(kind: str, name: str, known: list[str]) -> UsageError:
    """An error for an unknown name that suggests the closest known one."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UsageError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")


def counted(n: int, noun: str) -> str:
    """'1 epoch', '15 epochs', '2,000 images': a count and its noun, plural unless the count is one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def last_epochs(k: int) -> str:
    """'each of the last 5 epochs', or 'the last epoch' when there is one."""
    return "the last epoch" if k == 1 else f"each of the last {k} epochs"


class Note(UserWarning):
    """Something the user should know that is not an error (a schedule scaled to fewer epochs, an old name);
    the library warns, the CLI shows it as one note line, once."""


class NameNote(Note):
    """An old name was used and accepted."""
