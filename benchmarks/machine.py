"""The machine a benchmark runs on: what it is, how busy it is, and what the measured processes use.

Every benchmark records machine() beside its numbers and waits for a quiet machine before measuring: on a
shared 2-core box another user's load moves the numbers more than most changes being measured.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_until_quiet(max_load: float, max_wait_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Wait (up to max_wait_s) for the 1-minute load average to drop below max_load; say what was seen."""
    start = time.monotonic()
    load = load1()
    while load >= max_load and time.monotonic() - start < max_wait_s:
        log(f"load average {load:.2f} >= {max_load}: waiting for a quiet machine")
        time.sleep(min(60.0, max(1.0, max_wait_s - (time.monotonic() - start))))
        load = load1()
    return {"load1": load, "quiet": load < max_load, "waited_s": round(time.monotonic() - start, 1)}


class OtherCpu:
    """CPU time used by processes outside this benchmark (other users of a shared machine), in cores, from
    /proc/stat's busy time less this process tree's own. The load average cannot tell the two apart."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        import psutil

        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        me = psutil.Process()
        t = me.cpu_times()
        own = t.user + t.system + t.children_user + t.children_system
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                own += c.user + c.system
        return time.monotonic(), busy, own

    def cores(self) -> float:
        wall, busy, own = self._snapshot()
        wall0, busy0, own0 = self.start
        return round(max(0.0, (busy - busy0 - (own - own0)) / max(wall - wall0, 1e-6)), 2)


def wait_for_cpu(max_other: float, max_wait_s: float, log: Callable[[str], None]) -> float:
    """Wait until other processes use less than ``max_other`` cores over a few seconds; return their use."""
    start = time.monotonic()
    while True:
        meter = OtherCpu()
        time.sleep(3.0)
        other = meter.cores()
        if other < max_other or time.monotonic() - start > max_wait_s:
            return other
        log(f"other processes use {other:.2f} cores: waiting")
        time.sleep(10.0)


def machine() -> dict[str, Any]:
    import psutil

    from runtime.engine import available_cpus

    info: dict[str, Any] = {
        # What this process and its servers may use (affinity, a container's quota), as the runtime sizes its
        # threads: under `taskset -c 0` the line said "2 CPUs" while the runtime served with one thread.
        "cpus": available_cpus(),
        "host_cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
        flags = next(
            line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")
        )
        info["cpu"] = model
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, StopIteration):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime", "torch", "timm", "uvicorn", "starlette", "fastapi", "locust"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info


def usage(proc: Any) -> tuple[int, float] | None:
    """(RSS bytes, CPU seconds) of a psutil process and its children; None once it has ended."""
    import psutil

    rss, cpu = 0, 0.0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child that just ended
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
    except psutil.Error:
        return None
    return rss, cpu


def cpu_seconds(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    """CPU seconds used so far by these processes and their children."""
    import psutil

    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += (usage(psutil.Process(p.pid)) or (0, 0.0))[1]
    return total


class Sampler:
    """Samples a process's (and its children's) RSS and CPU time in a background thread. A process that ends
    meanwhile keeps the CPU time of its last sample."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.rss: list[int] = []
        self.cpu_seen = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        found = usage(self.proc)
        if found is None:  # the process itself has ended
            return
        rss, cpu = found
        self.rss.append(rss)
        self.cpu_seen = max(self.cpu_seen, cpu)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self.rss.clear()
        self.wall0, self.cpu0 = time.monotonic(), self.cpu_seen
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.monotonic() - self.wall0
        self.cpu = self.cpu_seen - self.cpu0

    def summary(self, seconds: float | None = None) -> dict[str, float]:
        """RSS, and CPU in cores over ``seconds`` (the time the load ran: sampled around a Locust process,
        the time also holds its start-up and exit, in which the server idles), else over the time sampled."""
        rss = self.rss or [0]
        return {
            "rss_peak_mb": round(max(rss) / MB, 1),
            "rss_mean_mb": round(sum(rss) / len(rss) / MB, 1),
            "cpu_cores": round(self.cpu / (seconds or self.wall), 2),
        }


def machine_line(m: dict[str, Any]) -> str:
    """machine()'s record in one line: the CPU's name alone does not tell an AVX2 EPYC from an AVX-512 one."""
    versions = ", ".join(f"{p} {m[p]}" for p in ("onnxruntime", "torch", "locust") if p in m)
    return f"Machine: {cpus(m)}, {m.get('memory_gb', '?')} GB; Python {m.get('python', '?')}, {versions}."


def cpus(m: dict[str, Any]) -> str:
    """ "AMD EPYC, 2 CPUs (avx2)", or "…, 2 of 64 CPUs (…)" where the benchmark may use only some of them."""
    used, host = m.get("cpus", "?"), m.get("host_cpus")
    of = f" of {host}" if host not in (None, used) else ""
    return f"{m.get('cpu', '?')}, {used}{of} CPUs ({', '.join(m.get('isa', []))})"
