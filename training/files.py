"""Writing a run's files so that a full disk or a stop never leaves a part of one that passes for it whole."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


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
        tmp.unlink(missing_ok=True)  # a half-written file would hold the space a retry needs
        cause = _write_error(exc)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


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
