"""Writing a run's files so that a full disk or a stop never leaves a part of one that passes for it whole."""

from __future__ import annotations

from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` gets all of ``data`` or stays as it was; the OSError of a failed write names ``path``
    (Python's write() names no file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise
