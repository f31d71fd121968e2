"""The processes of a run: the torchrun group (one process per GPU, or gloo on CPUs), the device each uses,
and the DataLoader workers' own process group."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.config import ConfigError

_TORCHRUN = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}


@dataclass
class Cluster:
    rank: int
    world_size: int
    device: torch.device
    owned: bool  # this call initialised the process group (and so tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def shared_outcome(self) -> Iterator[None]:
        """Around what rank 0 does alone (the folder's lock, the run's files): when that fails, the other
        ranks stop too, quietly (rank 0 says why), rather than die in their next collective with gloo's
        "Connection closed by peer" traceback under rank 0's one line."""
        try:
            yield
        except Exception:
            self._tell(failed=True)
            raise
        self._tell(failed=False)

    def _tell(self, *, failed: bool) -> None:
        if not self.distributed:
            return
        news = [failed]
        dist.broadcast_object_list(news, src=0)
        if news[0] and not self.main:
            raise ConfigError("rank 0 stopped the run")  # only rank 0 speaks (training.cli)


def setup_cluster(device_option: str) -> Cluster:
    """Join the torchrun process group when there is one (nccl on GPUs, gloo on CPUs)."""
    try:
        world, rank, local_rank = (int(os.environ.get(k, d)) for k, d in _TORCHRUN.items())
    except ValueError:
        raise ConfigError(f"{', '.join(_TORCHRUN)} must be whole numbers (torchrun sets them)") from None
    device = pick_device(device_option, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    owned = False
    if world > 1 and not dist.is_initialized():
        # DDP imports torch._dynamo. Imported after the group exists, it keeps references to the group (torch
        # 2.14), so destroy_process_group() did not free it and gloo's threads lived on into interpreter exit:
        # likely why a finished run rarely aborted there ("terminate called without an active exception").
        importlib.import_module("torch._dynamo")

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owned = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Cluster(rank=rank, world_size=world, device=device, owned=owned)


def pick_device(option: str, local_rank: int = 0) -> torch.device:
    if option == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(option)
    except RuntimeError:
        raise ConfigError(f"--device {option!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta, …: not what this loop is written and tested for
        raise ConfigError(f"--device {option!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device asks for CUDA but no CUDA device is visible")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def scan_said_once(cluster: Cluster) -> Iterator[None]:
    """Every rank scans the same folders: what the scan warns of (a val/ folder not read, files left out) is
    said by rank 0 alone, not once per process. Images a rank fails to read later stay its own to say."""
    scan = logging.getLogger("training.data")
    level = scan.level
    if not cluster.main:
        scan.setLevel(logging.ERROR)
    try:
        yield
    finally:
        scan.setLevel(level)


def loader_workers(requested: int) -> int:
    """--workers, at most the CPUs this process may use: more only queue for them, and the default 4 on a
    2-CPU machine had torch warn, in two lines quoting its own source, that the loader might freeze. The
    runtime's count, the container's CPU quota included (the affinity mask alone gave 4 under 2 CPUs)."""
    from runtime.engine import available_cpus

    return min(requested, available_cpus())


def worker_own_group(worker_id: int) -> None:
    """A DataLoader worker leaves the run's process group: a signal sent to the group (torchrun's SIGTERM, a
    terminal's Ctrl-C, kill -TERM -PGID) killed the workers too, and torch's SIGCHLD handler turned that into
    tracebacks in the main process. Now it reaches the run alone, which stops as for Ctrl-C and shuts them
    down; terminate() still ends a worker that hangs, and they exit if the run dies."""
    os.setpgid(0, 0)
    sys.excepthook = _quiet_resource_sharer


def _quiet_resource_sharer(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A worker hands each batch's tensors to the run over a socket (multiprocessing's resource sharer, in a
    thread that reports its errors through sys.excepthook). A run stopped mid-handover closes that socket, and
    the worker printed a BrokenPipeError traceback under the run's one line; a handover that fails while the
    run goes on fails in the run too, which says so. Anything else a worker reports here is still printed."""
    if tb is None or tb.tb_frame.f_globals.get("__name__") != "multiprocessing.resource_sharer":
        sys.__excepthook__(kind, exc, tb)
