"""A command's process ends without the interpreter's teardown, but after everything that matters."""
from __future__ import annotations

import subprocess
import sys

import pytest

from featcache.quickexit import exit_status

CHILD = r"""
import atexit, sys, threading, time
import torch  # loaded: the quick exit applies
from featcache.quickexit import exit_process

out = sys.argv[1]

def late_write():
    time.sleep(0.3)
    with open(out + ".thread", "w") as f:
        f.write("joined")

threading.Thread(target=late_write).start()  # not a daemon: the exit waits for it
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
sys.stdout.write("buffered, not flushed")
exit_process(sys.argv[2] if sys.argv[2] == "message" else int(sys.argv[2]))
"""


@pytest.mark.parametrize("code,message,status", [(None, "", 0), (3, "", 3), ("message", "message\n", 1)])
def test_exit_status_is_what_sys_exit_gives(code, message, status, capsys):
    assert exit_status(code) == status
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("code", ["0", "3", "message"])
def test_the_quick_exit_joins_threads_runs_atexit_and_flushes_first(tmp_path, code):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == {"0": 0, "3": 3, "message": 1}[code]
    assert proc.stdout == "buffered, not flushed"
    assert (tmp_path / "out.thread").read_text() == "joined"
    assert (tmp_path / "out.atexit").read_text() == "ran"
    assert proc.stderr == ("message\n" if code == "message" else "")
