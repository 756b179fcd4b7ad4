"""State files on a disk that may lose power at any instant, and may hold a planted link.

Every write is *atomic* (:func:`atomic_write`: a temp file in the same directory, fsync,
rename over the target, fsync the directory), so readers see the old or the new file, never
a mix, and a torn file never stops the next boot. Files are opened without following a
symbolic link as their last component (:func:`open_nofollow`; :class:`SymlinkRefused` names
the file), anything but a regular file is refused when read (:class:`NotAFile`: a FIFO would
block the reader), and everything is written mode 0600. A file that still fails to parse is
moved aside (:func:`move_aside`) for a human to look at. Used by the state dir
(:mod:`hecate.adapters.store`) and the bootstrap cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

FILE_MODE = 0o600
"""Every state file: the run history, the cache and the journal can hold what the cluster runs."""


class SymlinkRefused(OSError):
    """A state file's path is a symbolic link: refused, never followed."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link: refused, never followed", str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"{self.path} is a symbolic link: refused (Hecate never follows a link in its state dir)"


class NotAFile(OSError):
    """A state file's path is not a regular file (a FIFO would block the reader forever)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.EINVAL, "is not a regular file", str(path))

    def __str__(self) -> str:
        return f"{self.filename} is not a regular file: refused"


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The temp file is created exclusively (``O_EXCL``) and renamed over ``path``: a symbolic
    link at ``path`` is replaced, never followed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_nofollow(path: Path | str, flags: int, mode: int = FILE_MODE, *, dir_fd: int | None = None,
                  shown: Path | None = None) -> int:
    """``os.open`` that refuses a symbolic link as the last component (:class:`SymlinkRefused`,
    naming ``shown`` when ``path`` is relative to ``dir_fd``)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(path, dir_fd):
            raise SymlinkRefused(shown or path) from None
        raise


def _is_link(path: Path | str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def read_nofollow(path: Path | str, *, dir_fd: int | None = None, shown: Path | None = None) -> bytes:
    """A regular state file's bytes; a symbolic link or anything but a regular file is refused."""
    fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd, shown=shown)  # a FIFO must not block
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise NotAFile(shown or path)
        return fh.read()


def append_whole(fd: int, data: bytes) -> None:
    """Append all of ``data`` durably, or none of it: a short write is undone, so a full disk
    never leaves half a line for the next line to be glued to."""
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def move_aside(path: Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<time>``, kept for a human to look at; raises ``OSError``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside
