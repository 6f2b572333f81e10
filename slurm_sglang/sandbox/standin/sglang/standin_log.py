"""Log lines shaped like sglang's, to stderr, flushed line by line; `fatal` ends the process."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import NoReturn

_write_lock = threading.Lock()
_prefix = ""


def set_rank_prefix(prefix: str) -> None:
    """Set the tag sglang prints after the time (e.g. " TP0", " DP0 TP2")."""
    global _prefix
    _prefix = prefix


def log(message: str) -> None:
    """Write one line `[YYYY-MM-DD HH:MM:SS TPn] message` to stderr and flush it."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    line = f"[{stamp}{_prefix}] {message}\n"
    with _write_lock:
        sys.stderr.write(line)
        sys.stderr.flush()


def fatal(message: str, exit_code: int = 1) -> NoReturn:
    """Log `message` and end the whole process at once, from any thread."""
    log(message)
    # os._exit closes every socket, so peers see the group break at once.
    os._exit(exit_code)
