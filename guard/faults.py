"""Fault injection at named steps, so tests can crash or pause a real ``guard`` process
inside a window that matters (between two writes) instead of hoping a signal lands there.

``GUARD_FAULT=STEP`` ends the process at STEP as abruptly as SIGKILL would: no cleanup,
no ``finally``, no atexit. ``GUARD_FAULT=STEP:wait=PATH`` pauses it there until the file
PATH exists (so a test can act while the process sits inside the window);
``GUARD_FAULT=STEP:interrupt`` raises KeyboardInterrupt there, as Ctrl-C would.
Unset (as in production), a step costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

KILLED_EXIT = 137  # what a shell reports for a process killed by SIGKILL


def step(name: str) -> None:
    """Crash or pause here when ``GUARD_FAULT`` names this step."""
    spec = os.environ.get("GUARD_FAULT")
    if not spec:
        return
    target, _, action = spec.partition(":")
    if target != name:
        return
    if action.startswith("wait="):
        release = Path(action.removeprefix("wait="))
        while not release.exists():
            time.sleep(0.05)
        return
    if action == "interrupt":
        raise KeyboardInterrupt
    os._exit(KILLED_EXIT)
