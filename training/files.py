"""Writing a run's files so that a full disk or a stop never leaves a part of one that passes for it whole;
one skin-train at a time in a run folder."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from training.config import ConfigError


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: ``path`` gets all of it, on disk, or stays as it was (also on Ctrl-C
    and SIGTERM), and no temporary file is left. The OSError of a failed write names ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            # On disk before the rename: a crash could otherwise leave an empty file under the name (an empty
            # config.yaml refuses the same command), and NFS or a quota may say the disk is full only here.
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException as exc:
        # A half-written file would hold the space a retry needs. On a read-only file system even a missing
        # one cannot be unlinked (EROFS): that error would hide the write's, and name the .tmp file.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _write_error(exc)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


class RunNotSaved(OSError):
    """A run's file could not be written (a full disk, a folder turned read-only) after an epoch was saved:
    ``run_dir``'s last.pt holds the epochs before, which --resume goes on from."""

    def __init__(self, cause: OSError, run_dir: Path) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), cause.filename)
        self.run_dir = run_dir

    def then(self) -> str:
        full = self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        when = "once there is room" if full else "once it can be written"
        resume = shlex.quote(str(self.run_dir))  # copied into a shell: a folder name with a space
        return f"the epochs saved before are kept: continue with --resume {resume} {when}"


def not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read as one: a FIFO would wait, a device not end."""
    return "is not a regular file" if path.exists() else "does not exist"


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def _write_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind a failed write; torch.save ends its zip file even after a failed write, and the
    RuntimeError that raises hides the OSError (as its __context__)."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    return exc


class FolderLock:
    """One skin-train writes a run folder at a time: a second one on the same --out (started twice, a retry
    while the first still ran) passed its checks during the first's first epoch, or with --resume, and the
    two wrote over each other's checkpoints, both saying "outputs in" the folder."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def take(self, folder: Path) -> None:
        import fcntl

        try:
            fd = os.open(folder, os.O_RDONLY)  # the folder itself: no lock file to leave behind
        except OSError:
            return  # a folder that can be written but not listed: run unguarded, as before
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go when the process ends, however it ends
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another skin-train is writing to {folder}; wait for it to end, or pass another --out"
            ) from None
        except OSError:  # a file system without locks (ENOLCK on some NFS mounts): the run still goes on
            os.close(fd)
            return
        self.fd = fd
        _held.add(fd)

    def release(self) -> None:
        if self.fd is not None:
            _held.discard(self.fd)
            os.close(self.fd)
            self.fd = None


_held: set[int] = set()


def _let_go_in_child() -> None:
    """A forked DataLoader worker inherits the lock; it must not hold the folder once the run has ended."""
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_let_go_in_child)
