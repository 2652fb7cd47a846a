"""The one process supervisor: seeds trained in parallel and search workers are both child processes started
here. Children are spawned (never forked: the parent's torch may have started its threads), leave Ctrl-C to
the parent, send their messages through one queue, and are all stopped when the parent leaves, however it
leaves (killed, a child notices within a second and exits). An error a user caused in a child (a
TinyMnistError) comes back as one message, not a traceback."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from tinymnist.errors import TinyMnistError

POLL = 0.5  # seconds between looks at the children while no message comes
PARENT_CHECK = 1.0  # seconds between a child's looks at whether its parent is still there


@dataclass(frozen=True)
class Event:
    """A message from child ``key``: ``kind`` is the child's own ("epoch", ...), or "error" (payload: the
    TinyMnistError it raised), or "exit" (payload: its exit code; 0 when its function returned); or "tick"
    (no key) when POLL seconds passed without either, for the parent's own periodic work."""

    kind: str
    key: Hashable
    payload: object = None


def _child(target: Callable, key: Hashable, args: tuple, messages: multiprocessing.Queue, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    warnings.simplefilter("ignore")  # notes (old names, a scaled schedule) are the parent's to show
    # the parent's pid as it passed it: one killed while this child was still starting is already gone
    threading.Thread(target=_leave_with, args=(parent,), daemon=True).start()
    try:
        target(lambda kind, payload=None: messages.put((kind, key, payload)), *args)
    except TinyMnistError as e:
        messages.put(("error", key, e))
        raise SystemExit(2) from None


def _leave_with(parent: int) -> None:
    """End this child as soon as its parent is gone, however the parent went (a SIGTERM or SIGKILL runs none of
    its clean-up): an orphaned search worker would otherwise go on taking queued trials with the code it loaded.
    What it was training is left as a killed process leaves it (a run resumes; a trial is retried)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK)
    os._exit(3)


class Supervisor:
    """Child processes by key. ``start(key, target, *args)`` runs ``target(send, *args)`` in a new process,
    where ``send(kind, payload)`` reaches the parent; ``events()`` yields what they send and how they end.
    Use as a context manager: leaving it terminates every child still running."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.messages = self.ctx.Queue()
        self.running: dict[Hashable, multiprocessing.process.BaseProcess] = {}

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            process.join()
        self.running.clear()

    def start(self, key: Hashable, target: Callable, *args: object) -> int:
        """Start ``target`` as child ``key``; returns its pid."""
        process = self.ctx.Process(target=_child, args=(target, key, args, self.messages, os.getpid()),
                                   daemon=True)
        process.start()
        self.running[key] = process
        return process.pid

    def events(self) -> Iterator[Event]:
        """Messages as they come, and an "exit" event for each child that ends (after its last message), until
        no child is left. The caller may start more children while iterating."""
        while self.running:
            try:
                yield Event(*self.messages.get(timeout=POLL))
                continue
            except queue.Empty:
                yield Event("tick", None)
            for key, process in list(self.running.items()):
                if process.exitcode is not None:
                    yield from self._queued()  # a child's last messages come before its exit
                    del self.running[key]
                    process.join()
                    yield Event("exit", key, process.exitcode)

    def _queued(self) -> list[Event]:
        found = []
        while True:
            try:
                found.append(Event(*self.messages.get_nowait()))
            except queue.Empty:
                return found
