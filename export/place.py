"""Where a bundle goes: the checks on --out, the hidden staging folder beside it, and the swap into place.

The bundle is built in the staging folder and renamed onto ``out`` only once it is whole, synced and checked,
so a failed or stopped export never leaves half a bundle, and --overwrite never deletes anything but a bundle.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from export.errors import ExportError
from runtime import bundle as contract


def check_out(out: Path, *, overwrite: bool, checkpoint: Path) -> None:
    """An --out the finished bundle can be renamed onto, refused before any work when it cannot."""
    if out.exists() and not out.is_dir():  # first: --overwrite would not replace it either
        raise ExportError(f"{str(out)!r} exists and is not a folder; pick another --out for the bundle")
    if out.is_dir() and not out.is_symlink() and os.path.ismount(out):  # a volume: `docker run -v DIR:/out`
        # The bundle is renamed into place, and a mount point cannot be renamed or replaced (EBUSY): the
        # export would fail at its very end.
        raise ExportError(
            f"{str(out)!r} is a mount point, which the finished bundle cannot be renamed onto; pass a folder "
            f"inside it (--out {shlex.quote(str(out / 'bundle'))}) or mount the folder above it"
        )
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    if files := [str(p) for p in out.parents if p.exists() and not p.is_dir()]:
        raise ExportError(f"{files[0]!r} is a file: the bundle folder {str(out)!r} cannot be made under it")
    if contract.LONE_SURROGATE.search(str(out.absolute())):  # bytes that are not UTF-8
        raise ExportError(f"{str(out)!r} is not a UTF-8 path, which onnxruntime cannot open; rename it")
    if out.exists():
        check_replaceable(out, checkpoint)


def make_staging(out: Path) -> tuple[Path, list[Path]]:
    """The staging folder beside ``out``, and the folders made for it (deepest first, for remove_folders)."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as exc:  # named by the folder asked for, not the hidden one that could not be made
            raise OSError(exc.errno, exc.strerror or str(exc), str(out.parent)) from None
    except BaseException:
        remove_folders(made)
        raise
    # mkdtemp makes 0700 folders: a bundle must be readable like any folder this user creates (the serving
    # image runs as another user and mounts it read-only).
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging, made


def left_behind(out: Path) -> list[Path]:
    """Staging folders of exports killed outright (SIGKILL, the OOM killer), and the old bundle of one killed
    between its two renames."""
    name = glob.escape(out.name)
    return sorted({*out.parent.glob(f".{name}.partial-*"), *out.parent.glob(f".{name}.old-*")})


def remove_folders(made: list[Path]) -> None:
    """The folders made for out, deepest first: a failed export leaves nothing behind."""
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_replaceable(out: Path, checkpoint: Path) -> None:
    """What --overwrite may replace: a folder holding a bundle and nothing else (never a run, never other
    files)."""
    from export.uncertainty import PLOT_FILE

    bundle_files = {contract.MODEL_FILE, contract.INT8_MODEL_FILE, contract.REPORT_FILE, PLOT_FILE}
    if out.is_symlink():  # replacing it would replace the link, not the bundle it names
        raise ExportError(
            f"{str(out)!r} is a symbolic link; pass the folder it points to ({str(out.resolve())!r})"
        )
    if checkpoint.resolve().is_relative_to(out.resolve()):
        raise ExportError(f"{str(out)!r} holds the checkpoint being exported; write the bundle elsewhere")
    others = sorted(p.name for p in out.iterdir() if p.name not in bundle_files or not p.is_file())
    if others:
        raise ExportError(
            f"{str(out)!r} is not a bundle folder (it holds {others[0]!r}); --overwrite replaces only bundles"
        )


def sync(folder: Path) -> None:
    """Every file of ``folder`` on disk, then the folder: renamed into place unsynced, a crash soon after
    could leave empty files under the bundle's names (and NFS or a quota may report a full disk only here)."""
    for path in sorted(folder.iterdir()):
        try:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """Its names on disk, where the file system can: some (SMB, FUSE mounts) refuse to fsync a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def move_into_place(staging: Path, out: Path) -> None:
    # Ctrl-C, SIGTERM or SIGHUP between the two renames would leave no bundle at out: one that comes meanwhile
    # lets them finish, and the export ends written (it was, by then).
    with _signals_deferred():
        _rename_into_place(staging, out)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP do nothing while the block runs (handlers are the main thread's to change; a
    signal mask would not do: the kernel hands a blocked signal to another of the process's threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    earlier = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _rename_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = staging.with_name(staging.name.replace(".partial-", ".old-"))
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
