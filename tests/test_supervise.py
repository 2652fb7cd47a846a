"""The supervisor's children never outlive their parent, however it goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import time
from tinymnist.runs.supervise import Supervisor

def forever(send):
    while True:
        time.sleep(1)

if __name__ == "__main__":
    with Supervisor() as supervisor:
        print(supervisor.start("child", forever), flush=True)
        time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running (an exited child that nobody reaped yet is a zombie: not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_child_ends_when_its_parent_is_killed(how: signal.Signals, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    os.kill(parent.pid, how)  # no clean-up runs in the parent: the child has to notice by itself
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(child)
