"""Ending a command's process without the interpreter's teardown once torch is loaded.

When a command has done its work, Python's finalisation frees every object of every loaded
module. With torch and torchvision imported that alone took 2.3-3.1 s of one core on the
2-core AMD EPYC (``import torch, torchvision`` then a normal exit: 3.1 s from the last
statement to the process's end; ``import torch`` alone: 1.8 s; ``os._exit`` after the same
imports: 0.14 s), paid by every command that computed features or trained a torch head.

:func:`exit_process` first does what finalisation does that can matter to a user, in the
same order: it joins the non-daemon threads and runs ``threading``'s exit hooks
(``concurrent.futures`` and loky shut their pools down there), runs the ``atexit`` handlers
(h5py closes its files, ``multiprocessing`` and the DataLoader stop their workers, logging
flushes), flushes stdout and stderr; then it ends the process with ``os._exit``. What it
skips is freeing memory the operating system reclaims anyway. Without torch loaded the
normal exit is already fast, and is used.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_status(code) -> int:
    """``SystemExit.code`` as a process's exit status: None is 0, an int itself, anything else
    (a message) is printed to stderr and gives 1, as the interpreter does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code=None) -> NoReturn:
    """End the process with ``code`` (as ``sys.exit`` would), skipping the interpreter's
    teardown when torch is loaded (see the module's docstring)."""
    status = exit_status(code)
    shutdown = getattr(threading, "_shutdown", None)  # CPython's own first step of finalisation
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if "torch" not in sys.modules or shutdown is None or run_exit_handlers is None:
        sys.exit(status)
    shutdown()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to write
            pass
    os._exit(status)
