"""Writing files so that a crash never leaves a torn one, and run directories that one run uses at a time.

`atomic_write(path, write)` has `write(tmp_path)` fill a temporary file next to `path`, flushes it to disk
and renames it over `path` (a rename within one directory is atomic): readers see the old file or the new
one, never half of either. Temporary names are unique per call, so concurrent writers cannot clash.

`RunLock` is an exclusive lock on a run directory (``.lock``, held with `fcntl.flock`, released by the
operating system when the process dies), so two runs cannot write into one directory at once.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


class RunDirectoryError(OSError):
    """A run directory cannot be used: in use by another run, or not writable. The message names it."""


def atomic_write(path, write):
    """Write `path` through `write(tmp_path)` and an atomic rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text):
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class RunLock:
    """``with RunLock(directory):`` holds the directory's lock; another holder makes it raise RunDirectoryError."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.handle = None

    def __enter__(self):
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.directory / ".lock", "a+")
        except OSError as error:
            raise RunDirectoryError(f"out_dir={str(self.directory)!r} cannot be written: {error.strerror or error}") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunDirectoryError(f"out_dir={str(self.directory)!r} is in use by a run of {holder}; wait for it "
                                    "to finish or choose another directory") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False
