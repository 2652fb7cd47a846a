"""Old names, in one table: what was renamed, and the one function that accepts an old name.

Run records store the names of their day and people typed them, so an old name keeps working: it is read as
the new one, with one note (a NameNote warning, which the CLI shows as a line, once)."""

from __future__ import annotations

import warnings

from tinymnist.errors import NameNote

RENAMED: dict[str, dict[str, str]] = {
    "model": {**{f"seed_step{n}": f"original_step{n}" for n in range(1, 5)},
              "valid_8k7": "compact_8k7", "valid_7k4": "compact_7k4", "valid_3k8": "compact_3k8"},
    "step": {**{f"seed_step{n}": f"original_step{n}" for n in range(1, 5)},
             **{f"valid_step{n}": f"compact_step{n}" for n in range(1, 5)}},
    "journey": {"seed": "original", "valid": "compact"},
    "command": {"summary": "layers"},
}


def current(kind: str, name: str, note: bool = True) -> str:
    """``name`` as this version calls it: itself, or the new name of an old one (with a NameNote unless
    ``note`` is False, for comparisons nobody typed)."""
    new = RENAMED[kind].get(name)
    if new is None:
        return name
    if note:
        warnings.warn(NameNote(f"{kind} {name!r} is now called {new!r}; the old name still works."), stacklevel=2)
    return new
