"""Writing files so that a crash never leaves a torn one, and run directories that one run uses at a time.

`atomic_write(path, write)` has `write(tmp_path)` fill a temporary file next to `path`, flushes it to disk
and renames it over `path` (a rename within one directory is atomic): readers see the old file or the new
one, never half of either. Temporary names are unique per call, so concurrent writers cannot clash. A write
that fails (a full or read-only disk, a file-size limit, a directory removed under the run) raises
`FileWriteError`, an OSError whose message names the file and the cause; the old file is left as it was and
the temporary one is removed.

`RunLock` is an exclusive lock on a run directory (``.lock``, held with `fcntl.flock`, released by the
operating system when the process dies), so two runs cannot write into one directory at once. It is
re-entrant within one thread (the CLI holds it while it writes run.json and `fit` takes it again); another
thread or process is refused at once with `RunDirectoryError`.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path


class RunDirectoryError(OSError):
    """A run directory cannot be used: in use by another run, or not writable. The message names it."""


class FileWriteError(OSError):
    """A file could not be written (disk full, read-only, too large, ...); the message names the file and the
    cause, and the file on disk is the previous one (or absent). ``errno`` is the operating system's code when known."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


# writers report a failed write in their own types: torch.save a RuntimeError from its C++ stream writer
# ("PytorchStreamWriter failed writing file ..."), polars a ComputeError ("... IO error: File too large (os error 27)")
_WRITE_FAILURES = ("failed writing", "file write failed", "unexpected pos", "no space left", "disk quota",
                   "file too large", "read-only file system", "os error", "io error", "errno")
_STRERRORS = ("No space left on device", "File too large", "Read-only file system", "Disk quota exceeded",
              "Permission denied", "No such file or directory")


def _is_write_failure(error):
    return isinstance(error, OSError) or any(s in str(error).lower() for s in _WRITE_FAILURES)


def _reason(error):
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    for known in _STRERRORS:  # the operating system's words, wherever the writer put them
        if known.lower() in text.lower():
            return known
    text = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _create_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_CREATE_MODE = _create_mode()


def atomic_write(path, write):
    """Write `path` through `write(tmp_path)` and an atomic rename; returns the path. A failed write raises
    `FileWriteError` naming `path` (other errors of `write` propagate as they are)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise FileWriteError(f"cannot write {path}: {_reason(error)}", error.errno) from None
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, _CREATE_MODE)  # mkstemp's private 0600: give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, Exception) and _is_write_failure(error):
            raise FileWriteError(f"cannot write {path}: {_reason(error)}", getattr(error, "errno", None)) from None
        raise
    return path


def atomic_write_text(path, text):
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


_HELD = {}  # resolved directory -> [thread id, depth, handle] of the locks this process holds
_HELD_GUARD = threading.Lock()


class RunLock:
    """``with RunLock(directory):`` holds the directory's lock; another holder makes it raise RunDirectoryError.
    Re-entrant within a thread: a nested ``with RunLock(same directory)`` in the holding thread is a no-op."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.handle = None
        self.key = None

    def __enter__(self):
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.key = str(self.directory.resolve())
        except OSError as error:
            raise RunDirectoryError(f"out_dir={str(self.directory)!r} cannot be written: {error.strerror or error}") from None
        with _HELD_GUARD:
            held = _HELD.get(self.key)
            if held is not None and held[0] == threading.get_ident():
                held[1] += 1
                return self
        try:
            handle = open(self.directory / ".lock", "a+")
        except OSError as error:
            raise RunDirectoryError(f"out_dir={str(self.directory)!r} cannot be written: {error.strerror or error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryError(f"out_dir={str(self.directory)!r} is in use by a run of {holder}; wait for it "
                                    "to finish or choose another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        with _HELD_GUARD:
            _HELD[self.key] = [threading.get_ident(), 1, handle]
        return self

    def __exit__(self, *exc):
        with _HELD_GUARD:
            held = _HELD[self.key]
            held[1] -= 1
            if held[1]:
                return False
            del _HELD[self.key]
        handle = held[2]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        return False
