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
