"""A server's disk as a cache: files it can always build again, bounded in bytes.

Everything a server keeps on disk (archives it built, packs it read from the database) can be
rebuilt from the database, so the folder may be deleted at any moment, by an operator or by
another process's eviction. Files are written under a temporary name and renamed into place,
so a reader sees a whole file or none. Eviction takes the least recently used entries first;
an entry is the set of files that share a name up to the first suffix (`pack-X.pack` and
`pack-X.idx` go together); names starting with `.tmp-` are never entries.

A server's processes share the folder, and each evicts what it finds least recently used, so
"the file exists" is true only for the instant it is checked. Readers therefore hold what
they found: `open` (or `write_open`, for what they just made) hands back an open file, and a
file evicted while open stays readable (POSIX keeps it until the last descriptor closes).
Nothing reads a cache file by name after checking that it exists.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TOUCH_EVERY = 60.0  # seconds: "recently used" needs no more precision than this


class DiskCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._touched: dict[Path, float] = {}
        self._evicting = threading.Lock()

    def write(self, path: Path, fill: Callable[[BinaryIO], None]) -> None:
        """Create `path` from what `fill` writes, atomically; then keep the cache in bounds."""
        self.write_open(path, fill).close()

    def write_open(self, path: Path, fill: Callable[[BinaryIO], None]) -> BinaryIO:
        """`write`, returning the new file open for reading (the caller closes it): opened
        before it is renamed into place, so no eviction, this process's or another's, can
        take it away between writing and reading."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
            held = open(tmp, "rb")  # noqa: SIM115 - the caller's to close
            try:
                os.replace(tmp, path)
            except BaseException:
                held.close()
                raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._touched[path] = time.monotonic()
        self.evict(keep={_entry(path)})
        return held

    def open(self, path: Path) -> BinaryIO | None:
        """The file at `path` open for reading (the caller closes it), marked used; None when
        it is not in the cache. Held from here on, whoever evicts it."""
        try:
            held = open(path, "rb")  # noqa: SIM115 - the caller's to close
        except FileNotFoundError:
            return None
        self.touch(path)
        return held

    def touch(self, path: Path) -> None:
        """Mark `path` used (at most once a minute per file: it costs a system call)."""
        now = time.monotonic()
        if now - self._touched.get(path, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        self._touched[path] = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)

    def evict(self, keep: frozenset[str] | set[str] = frozenset()) -> int:
        """Delete least recently used entries until the cache fits; returns bytes freed."""
        if not self._evicting.acquire(blocking=False):
            return 0  # another thread is at it
        try:
            entries: dict[str, list[tuple[Path, os.stat_result]]] = {}
            for folder, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    path = Path(folder) / name
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue  # evicted by another process meanwhile
                    entries.setdefault(_entry(path), []).append((path, st))
            total = sum(st.st_size for files in entries.values() for _, st in files)
            freed = 0
            by_age = sorted(entries.items(), key=lambda e: max(st.st_mtime for _, st in e[1]))
            for key, files in by_age:
                if total - freed <= self.max_bytes:
                    break
                if key in keep:
                    continue
                for path, st in files:
                    path.unlink(missing_ok=True)
                    self._touched.pop(path, None)
                    freed += st.st_size
            return freed
        finally:
            self._evicting.release()


def _entry(path: Path) -> str:
    return str(path.parent / path.name.split(".", 1)[0])
