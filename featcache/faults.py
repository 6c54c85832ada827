"""Failpoints: named places where tests kill or interrupt the process to prove crash safety.

``FEATCACHE_FAILPOINT=NAME[:N[:SIGNAL]]`` makes the N-th (default first) pass
through ``failpoint(NAME)`` send SIGNAL (default KILL) to the process: to its
whole process group when it leads one (like Ctrl-C in a terminal reaches the
DataLoader workers too), else to itself. ``FEATCACHE_FAILPOINT_RANK=R`` limits
it to torchrun rank R. Unset (always, outside tests), a
failpoint is one environment lookup.
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("FEATCACHE_FAILPOINT")
    if not spec:
        return
    want, _, rest = spec.partition(":")
    if want != name:
        return
    only_rank = os.environ.get("FEATCACHE_FAILPOINT_RANK")
    if only_rank is not None and only_rank != os.environ.get("RANK", "0"):
        return
    nth, _, sig = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(nth or 1):
        return
    signum = getattr(signal, f"SIG{sig or 'KILL'}")
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)
