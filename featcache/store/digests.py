"""Content digests of files, with a stat cache so unchanged files are not re-read.

A row of the feature store is keyed by the digest of the image file's bytes
(BLAKE2b-128), so renamed or copied images share their row and two datasets
that share images share rows. Hashing reads every new file once; the cache
(SQLite, in the store folder) maps (path, size, mtime_ns, inode) to the digest so
that a warm run only stats its files.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DIGEST_SIZE = 16  # bytes -> 32 hex characters
SCHEMA = "digests-v2"


def hash_file(path: str | os.PathLike, algorithm: str = "blake2b", chunk: int = 1 << 20, **options) -> str:
    """Hex digest of a file's bytes with ``hashlib.new(algorithm, **options)``, read in chunks."""
    h = hashlib.new(algorithm, **options)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def digest_file(path: str | os.PathLike) -> str:
    """The content digest of an image file (BLAKE2b-128, hex)."""
    return hash_file(path, "blake2b", digest_size=DIGEST_SIZE)


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


class DigestCache:
    """(path, size, mtime_ns, inode) -> digest, in SQLite (safe for concurrent processes).

    Paths are stored as the file system's bytes, so any file name works.
    """

    def __init__(self, db_path: str | os.PathLike | None):
        self.db_path = Path(db_path).with_name(f"{Path(db_path).stem}-v2.sqlite") if db_path else None

    def _connect(self):
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=60)
        con.execute(
            "CREATE TABLE IF NOT EXISTS digests (path BLOB PRIMARY KEY, size INTEGER,"
            " mtime_ns INTEGER, inode INTEGER, digest TEXT)"
        )
        return con

    def digests(self, paths: list[str], *, workers: int = 8) -> list[str | None]:
        """Digest of each path (None for a file that cannot be read: the caller decides)."""
        stats: list[tuple | None] = []
        for p in paths:
            try:
                st = os.stat(p)
                stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                stats.append(None)
        known: dict[str, tuple] = {}
        con = None
        if self.db_path is not None:
            try:
                con = self._connect()
                known = {bytes(r[0]): r[1:] for r in con.execute("SELECT path, size, mtime_ns, inode, digest FROM digests")}
            except sqlite3.Error:
                con, known = None, {}
        out: list[str | None] = [None] * len(paths)
        todo = []
        for i, (p, st) in enumerate(zip(paths, stats)):
            if st is None:
                continue
            k = known.get(os.fsencode(p))
            if k is not None and tuple(k[:3]) == st:
                out[i] = k[3]
            else:
                todo.append(i)

        def one(i):
            try:
                return digest_file(paths[i])
            except OSError:
                return None

        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as ex:
                for i, d in zip(todo, ex.map(one, todo)):
                    out[i] = d
            if con is not None:
                rows = [(os.fsencode(paths[i]), *stats[i], out[i]) for i in todo if out[i] is not None]
                try:
                    with con:
                        con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", rows)
                except sqlite3.Error:
                    pass  # the cache is an optimisation; a locked or read-only db costs a re-read next time
        if con is not None:
            con.close()
        return out
