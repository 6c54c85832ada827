"""Publishing files atomically: write beside the target, fsync, rename.

Readers see the whole new file or the old one, never a part. A temporary file
is named ``.tmp-<host>-<pid>-<random><suffix>`` so that ``cache gc`` can tell
whether its writer is still alive.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator


def hostname() -> str:
    """This machine's name, as in temporary and shard file names (``socket.gethostname()``, without socket)."""
    return os.uname().nodename


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".tmp-{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, before_replace: Callable[[], None] | None = None,
                fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds it is fsynced and renamed to ``path``.

    ``fsync=False`` skips the fsync, for files whose reader checks them (named by a digest of
    their bytes): a crash may leave such a file damaged, never wrongly trusted.

    When the block (or the rename) fails, the temporary file is removed and the
    error propagates; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Publish ``text`` (UTF-8) at ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
