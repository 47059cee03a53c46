# Capture files only their owner can read, created without ever following a symlink or writing into a file
# that was already there, and the directory captures named by the capturer go to (the proxy's --capture DIR,
# RepairTransport(capture=DIR)): resolved once, pinned by an open descriptor, files under random names.
#
# Decisions. A capture file is created new: mode 0600, O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink or a file
# planted at its name makes the creation fail rather than be followed or truncated. A file the caller names
# (`capture="turn.sse"`) may already exist: the new file is created under a random name next to it and
# renamed over it, which replaces whatever was there (a symlink is replaced, not followed; a hard link to
# another file is unlinked from that name, the other file untouched). A capture directory given as a path
# that is or goes through a symlink is resolved safely: its real path is resolved once, opened with
# O_DIRECTORY|O_NOFOLLOW and kept open, and every file is created relative to that descriptor, so swapping
# the path (or a component of it) for a symlink later cannot redirect captures. The directory is created
# with mode 0700 when missing; an existing one keeps its mode (the files in it are 0600 whatever it is).
from __future__ import annotations

import os
import secrets
import time
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mendstream.errors import UsageError

if TYPE_CHECKING:
    from mendstream.recording.capture import CaptureWriter

__all__ = ["CaptureDirectory", "create_private", "write_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
_MODE = 0o600
_DIR_FD = os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd


def _temporary_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.tmp"


def _create(name: str | Path, dir_fd: int | None) -> int:
    """A new file, mode 0600 (umask aside, which can only remove bits), refusing symlinks and existing files."""
    fd = os.open(name, _CREATE, _MODE, dir_fd=dir_fd) if dir_fd is not None else os.open(name, _CREATE, _MODE)
    return fd


def _replace(source: str | Path, target: str | Path, dir_fd: int | None) -> None:
    if dir_fd is not None:
        os.replace(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    else:
        os.replace(source, target)


def _unlink(path: Path, dir_fd: int | None) -> None:
    try:
        if dir_fd is not None:
            os.unlink(path.name, dir_fd=dir_fd)
        else:
            os.unlink(path)
    except OSError:
        pass


def create_private(path: str | os.PathLike[str], *, dir_fd: int | None = None, exclusive: bool = False) -> IO[bytes]:
    """A new, empty file at ``path`` (mode 0600), open for writing.

    With ``exclusive`` the file is created at ``path`` itself and an existing file or symlink there is an
    error (``FileExistsError``); otherwise it is created under a random name in the same directory and
    renamed onto ``path``, replacing (never following or writing into) whatever was there. With ``dir_fd``
    (an open directory) ``path`` is a name relative to it. Raises ``OSError`` as ``os.open`` does.
    """
    path = Path(path)
    if exclusive:
        fd = _create(path.name if dir_fd is not None else path, dir_fd)
        return os.fdopen(fd, "wb")
    temporary = path.with_name(_temporary_name(path.name))
    fd = _create(temporary.name if dir_fd is not None else temporary, dir_fd)
    try:
        _replace(temporary.name if dir_fd is not None else temporary, path.name if dir_fd is not None else path,
                 dir_fd)
    except BaseException:
        os.close(fd)
        _unlink(temporary, dir_fd)
        raise
    return os.fdopen(fd, "wb")


def write_private(path: str | os.PathLike[str], data: bytes, *, dir_fd: int | None = None) -> None:
    """Write ``data`` to a new file (mode 0600) and rename it onto ``path`` at once: readers see the old
    file or the whole new one, and nothing at ``path`` is followed or written into."""
    path = Path(path)
    temporary = path.with_name(_temporary_name(path.name))
    source = temporary.name if dir_fd is not None else temporary
    fd = _create(source, dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _replace(source, path.name if dir_fd is not None else path, dir_fd)
    except BaseException:
        _unlink(temporary, dir_fd)
        raise


class CaptureDirectory:
    """Where a capturer that names its own files (the proxy, RepairTransport) writes its captures.

    ``path`` is created (mode 0700) if missing, resolved once (symlinks included) and kept open; each
    :meth:`writer` is a :class:`~mendstream.recording.capture.CaptureWriter` for a new file in it named
    ``YYYYmmddTHHMMSS-<16 random hex digits>.sse`` (and its ``.capture.json`` sidecar), created relative to
    the open directory, so the names cannot be guessed and a later change to ``path`` cannot redirect them.
    ``max_bytes`` caps each capture (see CaptureWriter).

    Raises :class:`~mendstream.errors.UsageError` when ``path`` exists and is not a directory, or cannot be
    created or opened (naming the reason).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> None:
        given = Path(path)
        try:
            given.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"capture directory {given} exists and is not a directory") from None
        except OSError as exc:
            raise UsageError(f"cannot create the capture directory {given}: {exc.strerror or exc}") from None
        real = Path(os.path.realpath(given))
        if not real.is_dir():
            raise UsageError(f"capture directory {given} is not a directory")
        self.path = real
        """The directory's real path, resolved when this object was made."""
        self.max_bytes = max_bytes
        self.fd: int | None = None
        if _DIR_FD and _DIRECTORY:
            try:
                self.fd = os.open(real, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
            except OSError as exc:
                raise UsageError(f"cannot open the capture directory {given}: {exc.strerror or exc}") from None
            weakref.finalize(self, os.close, self.fd)

    def new_name(self) -> str:
        """A fresh capture file name (``.sse``), unpredictable."""
        return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(8)}.sse"

    def writer(self, **options: Any) -> CaptureWriter:
        """A CaptureWriter for a new capture in this directory (``options`` as for CaptureWriter)."""
        from mendstream.recording.capture import CaptureWriter

        if self.max_bytes is not None:
            options.setdefault("max_bytes", self.max_bytes)
        for _ in range(8):  # a name taken (by a file planted under a guessed name): draw another
            try:
                return CaptureWriter(self.path / self.new_name(), dir_fd=self.fd, exclusive=True, **options)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free capture file name in {self.path} after 8 tries")
