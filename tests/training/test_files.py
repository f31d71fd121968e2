"""training.files: a run's files are written whole, on disk, or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from training.files import write_atomically


def test_a_full_disk_said_only_when_the_data_reaches_it_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS and disk quotas may report ENOSPC at fsync, after every write() succeeded.
    path = tmp_path / "config.yaml"
    path.write_bytes(b"the earlier run's\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as raised:
        write_atomically(path, b"a new run's\n")
    assert raised.value.filename == str(path)  # the CLI's one line names it
    assert path.read_bytes() == b"the earlier run's\n"
    assert list(tmp_path.iterdir()) == [path]


def test_a_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new" and list(tmp_path.iterdir()) == [path]


def test_a_folder_turned_read_only_names_the_file_and_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read-only file system refuses even an unlink of a file that is not there (EROFS): that second error
    # hid the first, and the one line named last.pt.tmp, a file that never existed.
    path = tmp_path / "last.pt"
    path.write_bytes(b"epoch 1")
    real_open = open

    def read_only(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith(".tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(OSError, match="Read-only file system") as raised:
        write_atomically(path, b"epoch 2")
    assert raised.value.filename == str(path)
    assert path.read_bytes() == b"epoch 1"


def test_the_resume_lines_quote_a_run_folder_for_the_shell() -> None:
    # Copied into a shell, '--resume runs/my run' resumed runs/my and passed 'run' as a stray argument.
    from training.files import RunNotSaved
    from training.stop import Interrupted, stopped

    run = Path("runs/my run")
    full = RunNotSaved(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "last.pt")), run)
    assert "continue with --resume 'runs/my run' once there is room" in full.then()
    assert stopped(Interrupted(run))[0].endswith("continue with --resume 'runs/my run'")
