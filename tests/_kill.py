"""Shared by the SIGKILL/resume tests (not a test module)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time


def kill_during(proc: subprocess.Popen, out: pathlib.Path, *, round: int = 1,
                phase: str = "fit", timeout: float = 600.0) -> dict | None:
    """SIGKILL `proc` (a discovery run writing to `out`) as soon as its
    ``progress.json`` says it is in `phase` of `round`; wait for it to die.

    Returns the progress record it was killed in, or ``None`` if the run ended (or
    `timeout` seconds passed) first.
    """
    killed_in, deadline = None, time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            p = json.loads((out / "progress.json").read_text())
        except (OSError, ValueError):  # not written yet, or caught mid-replace
            p = {}
        if p.get("round") == round and p.get("phase") == phase:
            os.kill(proc.pid, signal.SIGKILL)
            killed_in = p
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    return killed_in
