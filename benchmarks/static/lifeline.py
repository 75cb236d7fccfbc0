"""A compile worker ends when the report's process does, however that ends (SIGKILL
included). Standard library only: it runs first thing in a spawned worker, before
the worker imports torch and Triton."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

PARENT_ENV = "SISA_STATIC_PARENT"


def die_with_parent() -> None:
    """In a worker: the kernel's parent-death signal (Linux) and a watchdog thread,
    against the report's pid that it put in the environment; exit at once if that
    process is already gone."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent or parent == os.getpid():
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()
