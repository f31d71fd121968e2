"""Serving benchmark: the runtime and the reference-style baseline, one after the other, same Locust settings.

For each server: cold start (process start → ready answer, several times) and resident memory at idle; the
servers then stay up, and at each concurrency each one gets a Locust run in turn (closed loop, no think time,
the image mix of benchmarks/images.py) while its RSS and CPU are sampled, ``--rounds`` times, the order
reversed every other round. Writes Locust's CSV and HTML under WORK/locust/ and a summary with the ratios
(JSON + markdown) under OUT; stopped part-way, the runs it finished as OUT/serving-stopped.*. Measures only
when the machine is quiet (the 1-minute load average, and before each run the other processes' CPU use), and
records what it saw.

    python -m benchmarks.run --concurrency 1 4 8 --run-time 30 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import images
from benchmarks.machine import (
    OtherCpu,
    Sampler,
    cpu_seconds,
    load1,
    machine,
    machine_line,
    wait_for_cpu,
    wait_until_quiet,
)
from benchmarks.words import count
from runtime.cli import OneLineParser
from training.stop import how, say_stopped, signals_stop

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GOALS = {
    "throughput_ratio": 3.0,  # runtime / baseline requests per second, same concurrency
    "p50_1024_ms": 40.0,  # single client, end to end
    "p50_12mp_ms": 80.0,
    "cold_start_s": 1.5,
    "rss_under_load_mb": 350.0,
}
# One Locust process (one core) drives a few hundred users at most: past that it measures itself, and
# --concurrency 100000 took minutes and GBs before the first request.
MAX_USERS = 256


class BenchError(Exception):
    """A benchmark that cannot run; one line for people."""


@dataclass
class Server:
    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


def servers(checkpoint: Path | None, bundle_dir: Path, port: int) -> dict[str, Server]:
    # The servers run in ROOT (start): a relative path, given from elsewhere, named another folder there.
    bundle_dir = Path(bundle_dir).absolute()
    checkpoint = None if checkpoint is None else Path(checkpoint).absolute()
    py = sys.executable
    runtime = [py, "-m", "runtime", "--bundle", str(bundle_dir), "--port", str(port)]
    # skin-serve as shipped, then the same server under other settings: name → (environment, note).
    variants = {
        "runtime": (
            {},
            "skin-serve defaults: onnxruntime fp32, threads = CPU quota, two single images at once",
        ),
        "runtime-no-arena": (
            {"SKIN_ORT_MEMORY_ARENA": "0"},
            "skin-serve with onnxruntime's CPU memory arena off",
        ),
        "runtime-one": (
            {"SKIN_INFERENCE_CONCURRENCY": "1"},
            "one inference at a time, threads spinning within a run (the default until 2026-11-29 evening)",
        ),
        "runtime-one-no-spin": (
            {"SKIN_INFERENCE_CONCURRENCY": "1", "SKIN_ORT_SPINNING": "0"},
            "one inference at a time, threads sleeping between ops (the default until 2026-11-29)",
        ),
        "runtime-parallel": (
            {"SKIN_THREADS": "1", "SKIN_INFERENCE_CONCURRENCY": "2"},
            "two inferences at once with one onnxruntime thread each",
        ),
        "runtime-overlap-spin": (
            {"SKIN_INFERENCE_CONCURRENCY": "2", "SKIN_ORT_SPINNING": "1"},
            "two inferences at once with the threads spinning within each run",
        ),
        "runtime-openvino-f32": (
            {"SKIN_OPENVINO": "f32"},
            "SKIN_OPENVINO=f32: the graph on OpenVINO's CPU plugin",
        ),
        "runtime-openvino-bf16": (
            {"SKIN_OPENVINO": "bf16"},
            "SKIN_OPENVINO=bf16: OpenVINO's CPU plugin in bf16 (AMX / AVX-512 BF16)",
        ),
        "runtime-auto": (
            {"SKIN_OPENVINO": "auto"},
            "SKIN_OPENVINO=auto: bf16 where export measured it safe on this model, else onnxruntime fp32",
        ),
        "runtime-gather": (
            {"SKIN_GATHER": "4"},
            "SKIN_GATHER=4: single-image requests waiting for the model run together, up to 4",
        ),
        "runtime-openvino-bf16-two": (
            {"SKIN_OPENVINO": "bf16", "SKIN_INFERENCE_CONCURRENCY": "2"},
            "SKIN_OPENVINO=bf16 with two inferences at once (it runs one at a time by default)",
        ),
        "runtime-openvino-bf16-gather": (
            {"SKIN_OPENVINO": "bf16", "SKIN_GATHER": "4"},
            "SKIN_OPENVINO=bf16 with SKIN_GATHER=4",
        ),
    }
    found = {
        name: Server(name, runtime, "/readyz", env=env, note=note) for name, (env, note) in variants.items()
    }
    return {
        **found,
        "runtime-2workers": Server(
            "runtime-2workers",
            [
                py,
                "-m",
                "uvicorn",
                "runtime.app:app",
                "--workers",
                "2",
                "--port",
                str(port),
                "--no-access-log",
            ],
            "/readyz",
            env={"SKIN_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2"},
            note="two uvicorn worker processes, one onnxruntime thread each (quota // workers)",
        ),
        "baseline": Server(
            "baseline",
            [
                py,
                "-m",
                "benchmarks.baseline_server",
                "--checkpoint",
                str(checkpoint),
                # report.json is optional in a bundle; without one, the baseline serves {} at /api/report
                *(["--report", str(report)] if (report := bundle_dir / "report.json").is_file() else []),
                "--port",
                str(port),
            ],  # fmt: skip
            # The reference has no readiness endpoint; uvicorn answers only once the model is loaded.
            "/api/info",
            note="FastAPI + torch eager fp32, cv2 + albumentations, inference inline in the handler",
        ),
    }


SERVERS = tuple(servers(Path(), Path(), 0))  # the names --servers accepts, from the one table above


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(port: int) -> bool:
    """Whether something already accepts connections on 127.0.0.1:port."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# The servers run on 127.0.0.1: urlopen sent these requests to an http_proxy from the environment unless
# no_proxy named 127.0.0.1, and a ready server read as "not ready within 180 s".
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start(
    server: Server, port: int, log_path: Path, timeout: float = 180.0
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the server; return it and the seconds from process start to its first ready answer."""
    url = f"http://127.0.0.1:{port}{server.ready_path}"
    if port_taken(port):  # its answers would pass for this server's: ready at once, and measured
        raise BenchError(f"port {port} is in use by another process; {server.name} was not started")
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", **server.env}
    with open(log_path, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(server.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:  # Ctrl-C or SIGTERM while it starts: stopped too, not left holding the port
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise BenchError(
                    f"{server.name} exited with {proc.returncode}{because(log_path)}; see {log_path}"
                )
            try:
                with LOCAL.open(url, timeout=2) as response:
                    if response.status == 200:
                        return proc, time.perf_counter() - t0
            except OSError:
                time.sleep(0.01)
        raise BenchError(f"{server.name} was not ready within {timeout:.0f} s; see {log_path}")
    except BaseException:
        stop(proc)
        raise


def because(log_path: str | Path) -> str:
    """ ": REASON" from a log's last line (a command's one-line error, or a traceback's last line), so that a
    failure says why without opening the log; "" for an empty or missing log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last[:300].rstrip('.')}" if last else ""


def stop(*procs: subprocess.Popen[bytes]) -> None:
    # Every one is sent SIGTERM before any is waited for: a second Ctrl-C or SIGTERM during the wait (up to
    # 30 s each) then leaves none of them running.
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def served_by(base: str) -> dict[str, Any] | None:
    """What a runtime server says it runs (GET /api/info → onnxruntime): with SKIN_OPENVINO=auto it decides at
    start-up, so the result records what it chose. None for servers that do not say (the baseline)."""
    try:
        with LOCAL.open(base + "/api/info", timeout=30) as response:
            info = json.load(response)
    except (OSError, ValueError):
        return None
    backend = info.get("onnxruntime") if isinstance(info, dict) else None
    if not isinstance(backend, dict):
        return None
    return {key: backend.get(key) for key in ("openvino", "providers", "threads")}


def describe_served(served: dict[str, Any] | None) -> str:
    if not served:
        return ""
    if served.get("openvino") not in (None, "off"):
        engine = f"OpenVINO {served['openvino']}"
    else:
        engine = "onnxruntime fp32 (" + ", ".join(map(str, served.get("providers") or [])) + ")"
    return f"; served by {engine}, {count(served.get('threads'), 'thread')}"


def warm(base: str, rounds: int = 2) -> None:
    """A few requests of every kind first: the baseline's first torch call is slow, and lazy imports."""
    for _ in range(rounds):
        for kind, data in zip(images.KINDS, images.mix().values(), strict=True):
            body, content_type = images.multipart(
                data, "warm." + images.EXTENSION[kind.fmt], images.MIME[kind.fmt]
            )
            request = urllib.request.Request(
                base + "/api/predict", data=body, headers={"content-type": content_type}
            )
            with LOCAL.open(request, timeout=120) as response:
                response.read()


# ---- Locust


def locust(base: str, users: int, run_time: int, prefix: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """One headless Locust run; returns its statistics and the load generator's own CPU use."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", base,
        "-u", str(users), "-r", str(users), "--run-time", f"{run_time}s", "--stop-timeout", "30",
        *report_flags(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    stats_csv = Path(f"{prefix}_stats.csv")
    stats_csv.unlink(missing_ok=True)  # an earlier run's would pass for this one's if Locust failed early
    # Closed loop: the overload run's pacing, left in the environment, would pace these users too.
    env = {k: v for k, v in os.environ.items() if k not in ("SKIN_LOCUST_RATE", "SKIN_LOCUST_BY_STATUS")}
    with open(f"{prefix}.log", "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        with Sampler(proc.pid) as sampler:
            wait_locust(proc, run_time + 120, prefix)
    if not stats_csv.is_file():
        raise BenchError(
            f"Locust exited with {proc.returncode} and wrote no statistics{because(f'{prefix}.log')}; "
            f"see {prefix}.log"
        )
    stats = read_stats(stats_csv)
    return stats, {"cpu_cores": sampler.summary()["cpu_cores"], "exit_code": proc.returncode}


def report_flags(prefix: Path) -> list[str]:
    """Locust's --csv and --html at ``prefix``, absolute: Locust runs in ROOT, and a relative WORK from
    elsewhere put its files there, where they were not found ("wrote no statistics")."""
    where = Path(prefix).absolute()
    return ["--csv", str(where), "--html", f"{where}.html"]


def wait_locust(proc: subprocess.Popen[bytes], timeout: float, prefix: Path) -> None:
    """Wait for a Locust run to end. On Ctrl-C, SIGTERM or a hang it is stopped first: a load generator left
    behind would go on sending for the rest of its run time."""
    try:
        proc.wait(timeout=timeout)
    except BaseException as exc:
        stop(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"Locust did not end within {timeout:.0f} s; see {prefix}.log") from None
        raise


def read_stats(path: Path) -> dict[str, Any]:
    """Locust's _stats.csv → per request name: count, failures, rps, p50/p95/p99 (ms). The rate is kept as
    Locust wrote it: ratios and sums are taken from it, and rounded to 2 decimals first it moved a ratio by
    a percent or more under 1 req/s. The summaries round it where they show it."""
    if not path.is_file():
        raise BenchError(f"Locust wrote no statistics ({path}); see its log beside it")
    rows: dict[str, Any] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]),
                "mean_ms": round(float(row["Average Response Time"]), 1),
            }
    return rows


def _number(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


# ---- the benchmark


def start_measured(
    name: str,
    *,
    checkpoint: Path | None,  # only the baseline serves it
    bundle: Path,
    cold_starts: int,
    work: Path,
    max_other: float,
    max_wait_s: float,
    log: Callable[[str], None],
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    """Start a server ``cold_starts`` times, timing each; leave the last one running, warmed up, with its idle
    RSS measured. Returns the process, its base URL and its result so far. On ``port``, else a free one."""
    port = port or free_port()
    server = servers(checkpoint, bundle, port)[name]
    log_path = work / f"{server.name}.log"
    log_path.unlink(missing_ok=True)
    times = []
    wait_for_cpu(max_other, max_wait_s, log)
    for i in range(cold_starts):
        proc, seconds = start(server, port, log_path)
        times.append(seconds)  # as measured: kept to 1 ms, 0.5249 s read 0.52 here and 0.53 in the table
        log(f"{server.name}: ready in {cold_start(seconds):.2f} s (start {i + 1}/{cold_starts})")
        if i < cold_starts - 1:
            stop(proc)
    result: dict[str, Any] = {"note": server.note, "env": server.env, "cold_start_s": times, "runs": {}}
    base = f"http://127.0.0.1:{port}"
    try:
        warm(base)
        result["served"] = served_by(base)
        time.sleep(1.0)
        with Sampler(proc.pid) as idle:
            time.sleep(2.0)
    except BaseException:
        stop(proc)
        raise
    result["idle"] = idle.summary()
    return proc, base, result


def load_run(
    name: str,
    proc: subprocess.Popen[bytes],
    base: str,
    *,
    users: int,
    run_time: int,
    prefix: Path,
    idle: Sequence[subprocess.Popen[bytes]],
    max_other: float,
    max_wait_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One Locust run against one server, its RSS and CPU sampled; ``idle`` are the other servers, up and
    waiting, whose CPU use during the run is recorded to show they kept out of the way."""
    wait_for_cpu(max_other, max_wait_s, log)
    load_before = load1()
    other = OtherCpu()
    idle_before = cpu_seconds(idle)
    with Sampler(proc.pid) as sampler:
        stats, generator = locust(base, users, run_time, prefix)
    if proc.poll() is not None:  # its connection errors were fast "requests": its row would read as a result
        log_path = prefix.parent.parent / f"{name}.log"  # WORK/NAME.log, as start_measured names it
        raise BenchError(
            f"{name} exited with {proc.returncode} during the run at concurrency {users}; see {log_path}"
        )
    used = sampler.summary(run_time)
    run = {
        "load1_before": load_before,
        "other_cpu_cores": other.cores(),
        "idle_servers_cpu_cores": round((cpu_seconds(idle) - idle_before) / run_time, 2),
        "server": used,
        "load_generator": generator,
        "stats": stats,
    }
    agg = stats.get("Aggregated", {})
    log(
        f"{name} c={users}: {_round(agg.get('rps'), 2)} req/s, p50 {agg.get('p50_ms')} ms, "
        f"p95 {agg.get('p95_ms')} ms, failures {agg.get('failures')}, "
        f"RSS peak {used['rss_peak_mb']} MB, CPU {used['cpu_cores']} cores, "
        f"others {run['other_cpu_cores']} cores"
    )
    return run


def bench_servers(
    names: Sequence[str],
    *,
    checkpoint: Path | None,  # only the baseline serves it
    bundle: Path,
    concurrency: Sequence[int],
    rounds: int,
    run_time: int,
    cold_starts: int,
    work: Path,
    max_other: float,
    max_wait_s: float,
    log: Callable[[str], None],
    results: dict[str, dict[str, Any]],
    port: int | None = None,
) -> None:
    """Every server started (cold starts timed) and left up; then, at each concurrency, ``rounds`` rounds of
    one Locust run per server, the order reversed every other round (A B, B A, A B, ...). A run's neighbours
    in time are the other servers' runs at the same concurrency, so a slow or fast spell of the machine
    falls on both sides of a ratio rather than on one server. Each result goes into ``results`` as it
    comes, so a benchmark stopped part-way still has the runs it finished. Given ``port``, the servers listen
    on it and the ports after it, in the order of ``names``."""
    running: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for i, name in enumerate(names):
            proc, base, results[name] = start_measured(
                name,
                port=port + i if port else None,
                checkpoint=checkpoint,
                bundle=bundle,
                cold_starts=cold_starts,
                work=work,
                max_other=max_other,
                max_wait_s=max_wait_s,
                log=log,
            )
            running[name] = proc, base
        for users in concurrency:
            for r in range(rounds):
                for name in names if r % 2 == 0 else list(reversed(names)):
                    proc, base = running[name]
                    suffix = f"-r{r + 1}" if rounds > 1 else ""
                    run = load_run(
                        name,
                        proc,
                        base,
                        users=users,
                        run_time=run_time,
                        prefix=work / "locust" / f"{name}-c{users}{suffix}",
                        idle=[p for other, (p, _) in running.items() if other != name],
                        max_other=max_other,
                        max_wait_s=max_wait_s,
                        log=log,
                    )
                    results[name]["runs"].setdefault(str(users), []).append(run)
    finally:
        stop(*(proc for proc, _ in running.values()))


def run_benchmark(
    *,
    work: str | Path = "runs/bench",
    out: str | Path = "benchmarks/results",
    servers_to_run: Sequence[str] = ("runtime", "baseline"),
    concurrency: Sequence[int] = (1, 4, 8),
    rounds: int = 1,
    run_time: int = 30,
    cold_starts: int = 3,
    max_load: float = 0.6,
    max_other: float = 0.25,
    max_wait_s: float = 1200.0,
    bundle: str | Path | None = None,
    checkpoint: str | Path | None = None,
    port: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark the servers one after the other (see bench_servers); write OUT/serving.json and
    OUT/serving.md."""
    work, out = Path(work), Path(out)
    unknown = [s for s in servers_to_run if s not in SERVERS]
    if unknown:
        raise BenchError(f"unknown server {unknown[0]!r} (choose from {', '.join(SERVERS)})")
    for flag, value in (
        ("--concurrency", min(concurrency, default=0)),
        ("--rounds", rounds),
        ("--run-time", run_time),
        ("--cold-starts", cold_starts),
    ):
        if value < 1:
            raise BenchError(f"{flag} must be at least 1, not {value}")
    if max(concurrency) > MAX_USERS:
        raise BenchError(f"--concurrency must be at most {MAX_USERS}, not {max(concurrency)}")
    if len(set(servers_to_run)) != len(servers_to_run):
        raise BenchError("name each server once (--rounds repeats the runs)")
    if len(set(concurrency)) != len(concurrency):  # a second run at one filed as a second round, unordered
        raise BenchError("name each concurrency once (--rounds repeats the runs)")
    check_ports(port, len(servers_to_run))
    check_out(out)
    check_out(work, "--work")
    own = bundle is None
    if bundle is not None and checkpoint is None:  # only the baseline serves a checkpoint
        if "baseline" in servers_to_run:
            raise BenchError(
                "pass both --bundle and --checkpoint, or leave baseline out of --servers (it serves the "
                "checkpoint)"
            )
        bundle_classes(bundle)
        bundle = Path(bundle)
    else:
        checkpoint, bundle = model_files(work, bundle=bundle, checkpoint=checkpoint, log=log)
    model = served_model(bundle, own=own)
    (work / "locust").mkdir(parents=True, exist_ok=True)

    quiet = wait_until_quiet(max_load, max_wait_s, log)
    log(f"load average {quiet['load1']:.2f} at the start")
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_at_start": quiet,
        "settings": {
            "concurrency": list(concurrency),
            "rounds": rounds,
            "run_time_s": run_time,
            "cold_starts": cold_starts,
            "max_other_cpu_cores": max_other,
            "mix": {
                k.name: {"weight": k.weight, "size": list(k.size), "format": k.fmt} for k in images.KINDS
            },
            "other_requests": {"info": 1, "report": 1},
            "model": model,
            "environment": skin_environment(),
            "bundle": str(bundle),
            "checkpoint": None if checkpoint is None else str(checkpoint),
        },
    }
    summary["servers"] = {}
    try:
        bench_servers(
            list(servers_to_run),
            checkpoint=checkpoint,
            bundle=bundle,
            concurrency=concurrency,
            rounds=rounds,
            run_time=run_time,
            cold_starts=cold_starts,
            work=work,
            max_other=max_other,
            max_wait_s=max_wait_s,
            log=log,
            results=summary["servers"],
            port=port,
        )
    except BaseException as exc:  # Ctrl-C, SIGTERM, a server that died: the runs finished are kept
        if done := finished_runs(summary):
            keep_stopped(
                exc,
                summary,
                lambda: write_summary(summary, out, log, name="serving-stopped"),
                log,
                runs=(done, len(servers_to_run) * len(concurrency) * rounds),
            )
        raise
    write_summary(summary, out, log)
    return summary


def finished_runs(summary: dict[str, Any]) -> int:
    return sum(len(runs) for server in summary["servers"].values() for runs in server["runs"].values())


def write_summary(
    summary: dict[str, Any], out: Path, log: Callable[[str], None], name: str = "serving"
) -> None:
    """OUT/NAME.json and OUT/NAME.md, with the ratios and goals of the runs in ``summary``."""
    summary["load_at_end"] = load1()
    summary["comparison"] = compare(summary)
    gone = save_summary(out, name, summary, markdown(summary))
    log(f"wrote {out / f'{name}.json'} and {out / f'{name}.md'}{stopped_note(summary)}{gone}")


def save_summary(out: Path, name: str, summary: dict[str, Any], page: str) -> str:
    """OUT/NAME.json and OUT/NAME.md, each written whole or not at all: a full disk cut the earlier
    result's file short in place, and the error named no file. A complete summary then removes an earlier
    run's OUT/NAME-stopped.*, which a reader would take for the current results beside it; what it removed
    is the "wrote ..." line's ending."""
    from training.files import write_atomically

    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / f"{name}.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    write_atomically(out / f"{name}.md", page.encode("utf-8"))
    if "stopped" in summary:
        return ""
    gone = [p.name for p in (out / f"{name}-stopped.json", out / f"{name}-stopped.md") if p.is_file()]
    for filename in gone:
        (out / filename).unlink()
    return f"; removed {' and '.join(gone)}, from a run stopped part-way" if gone else ""


def keep_stopped(
    stop: BaseException,
    summary: dict[str, Any],
    write: Callable[[], None],
    log: Callable[[str], None],
    *,
    runs: tuple[int, int] | None = None,
) -> None:
    """A benchmark stopped part-way (Ctrl-C, SIGTERM, a failure): ``summary`` is marked stopped, with why and,
    given ``runs``, how many of the planned runs it finished, and kept by ``write``. That writes it under
    another name than a complete run's, so a complete summary from an earlier run stays as it is."""
    from runtime.engine import first_line

    why = how(stop)[0] if isinstance(stop, KeyboardInterrupt) else first_line(stop)
    summary["stopped"] = {"why": why}
    if runs is not None:
        summary["stopped"].update(runs_finished=runs[0], runs_planned=runs[1])
    try:
        write()
    except OSError as error:
        log(f"what was measured before it stopped could not be kept: {error}")


def stopped_note(summary: dict[str, Any]) -> str:
    """The "wrote ..." line's ending for a summary kept by keep_stopped; "" for a complete one."""
    stopped = summary.get("stopped")
    if not stopped:
        return ""
    if "runs_finished" in stopped:
        return f" ({stopped['runs_finished']} of {stopped['runs_planned']} runs, then {stopped['why']})"
    return f" (stopped part-way: {stopped['why']})"


def stopped_heading(summary: dict[str, Any], rest: str) -> list[str]:
    """The markdown's first lines for a summary kept by keep_stopped, ``rest`` saying what the page holds;
    none for a complete one."""
    stopped = summary.get("stopped")
    if not stopped:
        return []
    after = ""
    if "runs_finished" in stopped:
        after = f" after {stopped['runs_finished']} of {stopped['runs_planned']} runs"
    return [f"**Stopped part-way ({stopped['why']}){after}**: {rest}", ""]


def check_ports(port: int | None, servers: int) -> None:
    """BenchError now if --port and the ports after it, one per server, do not all exist or one is in use:
    found when its server starts, that came after the servers before it had started and warmed up."""
    if port is None:
        return
    if not 1 <= port <= 65536 - servers:
        last = f", and the {servers - 1} after it," if servers > 1 else ""
        raise BenchError(f"--port {port}{last} must be from 1 to 65535")
    taken = next((p for p in range(port, port + servers) if port_taken(p)), None)
    if taken is not None:
        raise BenchError(f"port {taken} is in use by another process (--port {port}, one port per server)")


def check_out(out: Path, flag: str = "--out") -> None:
    """BenchError now if OUT (or WORK, ``flag``) cannot take what is written there: found only when writing
    the summary, the runs would be lost; WORK as a file was an OSError's '[Errno 17] File exists'."""
    out = Path(out)
    folder = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not folder.is_dir():
        raise BenchError(f"{flag} {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BenchError(f"{flag} {out}: {folder} is not writable")


def model_files(
    work: Path,
    *,
    bundle: str | Path | None,
    checkpoint: str | Path | None,
    log: Callable[[str], None],
) -> tuple[Path, Path]:
    """(checkpoint, bundle): the ones given (a trained model, say), or the benchmark's own, built in work."""
    from benchmarks.weights import prepare
    from training.files import not_a_file
    from training.model import ModelError, load_checkpoint

    if (bundle is None) != (checkpoint is None):
        raise BenchError("pass both --bundle and --checkpoint, or neither")
    if bundle is None or checkpoint is None:
        return prepare(work, log=log)
    names = bundle_classes(bundle)
    if not Path(checkpoint).is_file():
        raise BenchError(f"--checkpoint {checkpoint} {not_a_file(Path(checkpoint))}")  # a folder is no file
    try:  # and the checkpoint as torch reads it: unread, its path would be "not available" or a dead server
        ckpt = load_checkpoint(checkpoint)
    except ModelError as exc:
        raise BenchError(f"--checkpoint {checkpoint}: {exc}") from None
    if list(ckpt["class_names"]) != names:  # another model: its answers and speed would be compared as ours
        raise BenchError(f"--checkpoint {checkpoint} is not --bundle {bundle}'s model: their classes differ")
    return Path(checkpoint), Path(bundle)


def bundle_classes(bundle: str | Path) -> list[str]:
    """A --bundle's class names, opened as the runtime opens it: a broken bundle is one line now, not a
    server that fails to start later."""
    from runtime.bundle import MODEL_FILE, BundleError
    from runtime.engine import Engine

    if not (Path(bundle) / MODEL_FILE).is_file():
        raise BenchError(f"--bundle {bundle}: no {MODEL_FILE} there")
    try:
        return list(Engine(bundle, threads=1).meta.class_names)
    except BundleError as exc:
        raise BenchError(f"--bundle {bundle}: {exc}") from None


def threads_or_cpus(threads: int) -> int:
    """--threads checked against the CPUs this process may use (affinity, cgroup quota), 0 meaning all of
    them: more threads than CPUs time the cores' sharing, not the model (and 100000 took 16 GB)."""
    from runtime.engine import available_cpus

    cpus = available_cpus()
    if not 0 <= threads <= cpus:
        raise BenchError(
            f"--threads must be from 0 to {cpus}, the CPUs this process may use (0: all of them), "
            f"not {threads}"
        )
    return threads or cpus


def describe_model(meta: Any, bundle: Path, *, own: bool) -> str:
    """What the summaries say was served: a BundleMeta's model, and whether it is the benchmark's own."""
    which = (
        "benchmark weights: see benchmarks/weights.py"
        if own
        else f"{meta.model_name} {meta.model_version}, the bundle at {bundle}"
    )
    return f"{meta.architecture} at {meta.input_size[0]} px, {meta.num_classes} classes ({which})"


def served_model(bundle: Path, *, own: bool) -> str:
    from runtime.engine import Engine

    return describe_model(Engine(bundle, threads=1).meta, bundle, own=own)


def compare(summary: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the baseline, and the issue's goals next to what was measured. A round's throughput
    ratio is taken between the two servers' runs of that round, next to each other in time; the median of
    the rounds' ratios stands for the concurrency (with one round, it is that round's). Every figure is
    taken from unrounded ones and rounded once, for the summary."""
    found = summary["servers"]
    result: dict[str, Any] = {}
    base = found.get("baseline")
    for name, server in found.items():
        if name == "baseline":
            continue
        ratios, medians = {}, {}
        for users, runs in server["runs"].items():  # no baseline, no ratios: the other goals still stand
            others = base["runs"].get(users) if base else None
            if not others:
                continue
            ours = [run["stats"]["Aggregated"] for run in runs]
            theirs = [run["stats"]["Aggregated"] for run in others]
            # Paired by round; a benchmark stopped part-way can have one more run on one side.
            rounds = [_ratio(ok_rps(a), ok_rps(b)) for a, b in zip(ours, theirs, strict=False)]
            medians[users] = _median(rounds)
            p50 = _ratio(_median(t["p50_ms"] for t in theirs), _median(o["p50_ms"] for o in ours))
            p95 = _ratio(_median(t["p95_ms"] for t in theirs), _median(o["p95_ms"] for o in ours))
            ratios[users] = {
                "throughput": _round(medians[users], 2),
                "throughput_rounds": [_round(r, 2) for r in rounds],
                "p50_speedup": _round(p50, 2),
                "p95_speedup": _round(p95, 2),
            }
        result[name] = {"vs_baseline": ratios, "goals": goals(server, medians)}
    return result


def goals(server: dict[str, Any], throughput: dict[str, float | None]) -> dict[str, Any]:
    """The goals against the medians over rounds (latency, cold start, ``throughput``: each concurrency's
    ratio) and the peak (memory), each taken unrounded and judged as the summary shows it: a 3.0× that
    missed 3× read as a contradiction (2.996 is within any run's noise of 3 anyway)."""
    single = [run["stats"] for run in server["runs"].get("1", [])]
    p50_1024 = _median(s.get("predict photo 1024x768 jpeg", {}).get("p50_ms") for s in single)
    p50_12mp = _median(s.get("predict phone 12MP jpeg", {}).get("p50_ms") for s in single)
    peaks = [run["server"]["rss_peak_mb"] for runs in server["runs"].values() for run in runs]
    rss = max(peaks, default=None)
    cold = _median(server["cold_start_s"])
    worst_ratio = min((r for r in throughput.values() if r is not None), default=None)
    rows = {  # the figure as shown, the goal, how it is met
        "throughput_ratio": (_round(worst_ratio, 2), GOALS["throughput_ratio"], ">="),
        "p50_1024_ms": (_round(p50_1024, 1), GOALS["p50_1024_ms"], "<="),
        "p50_12mp_ms": (_round(p50_12mp, 1), GOALS["p50_12mp_ms"], "<="),
        "cold_start_s": (None if cold is None else cold_start(cold), GOALS["cold_start_s"], "<="),
        "rss_under_load_mb": (rss, GOALS["rss_under_load_mb"], "<="),
    }
    return {
        k: {"measured": v, "goal": g, "met": None if v is None else (v >= g if op == ">=" else v <= g)}
        for k, (v, g, op) in rows.items()
    }


def cold_start(seconds: float) -> float:
    """A cold start to 10 ms, the one rounding for the log, the table of starts and the goal (from the
    measured seconds): the goal's median read 0.675 beside the table's 0.68."""
    return round(seconds, 2)


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def ok_rps(stats: dict[str, Any]) -> float:
    """Successful requests per second (a fast error must not count as throughput)."""
    if not stats["requests"]:
        return 0.0
    return stats["rps"] * (stats["requests"] - stats["failures"]) / stats["requests"]


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where b is none or 0 (a baseline that answered nothing right). An a of 0 is 0.0, not
    None: a runtime that answers nothing right at a concurrency fails the throughput goal there."""
    return None if a is None or not b else a / b


def _times(ratio: float | None) -> str:
    """A ratio as the tables write it; "–" where there is none (a baseline that answered nothing right)."""
    return "–" if ratio is None else f"{ratio}×"


def row(*cells: object) -> str:
    return "| " + " | ".join("–" if c is None else str(c) for c in cells) + " |"


def markdown(summary: dict[str, Any]) -> str:
    m, s = summary["machine"], summary["settings"]
    mix = ", ".join(f"{name} ×{v['weight']}" for name, v in s["mix"].items())
    rounds = s.get("rounds", 1)
    baseline = (
        f"; the baseline serves its checkpoint, {s['checkpoint']}" if "baseline" in summary["servers"] else ""
    )
    order = (
        f" At each concurrency, {rounds} rounds of one run per server, all servers up, the order reversed "
        "every other round; a round's ratio compares that round's runs, and the goals take the median of "
        "the rounds."
        if rounds > 1
        else ""
    )
    lines = [
        f"# Serving benchmark ({summary['date']})",
        "",
        *stopped_heading(summary, "the tables, ratios and goals below are those runs' only."),
        machine_line(m),
        *([f"Model: {s['model']}{baseline}."] if "model" in s else []),  # older summaries do not say
        f"Load average (1 min): {summary['load_at_start']['load1']:.2f} at the start, "
        f"{summary['load_at_end']:.2f} at the end. Server and Locust share the same CPUs; each run starts "
        f"once other processes use < {s['max_other_cpu_cores']} cores; what they used during it is shown.",
        f"Each run: {s['run_time_s']} s, closed loop (no think time), users = concurrency. "
        f"Mix: {mix}, /api/info ×1, /api/report ×1.{order}",
        "",
        *[
            f"- {name}: {server.get('note', '')}{describe_served(server.get('served'))}"
            for name, server in summary["servers"].items()
        ],
        *environment_line(s),
        "",
    ]
    heads = ["req/s", "p50 ms", "p95 ms", "p99 ms", "failures", "server RSS peak MB", "server CPU cores"]
    heads += ["Locust CPU cores", "others' CPU cores", "idle servers' CPU cores"]
    first = ["server", "concurrency", *(["round"] if rounds > 1 else [])]
    lines += [row(*first, *heads), "|---|" + "---:|" * (len(first) - 1 + len(heads))]
    for lead, run in _runs(summary, by_round=rounds > 1):
        a, srv = run["stats"]["Aggregated"], run["server"]
        lines.append(
            row(
                *lead,
                _round(a["rps"], 2),
                a["p50_ms"],
                a["p95_ms"],
                a["p99_ms"],
                f"{a['failures']}/{a['requests']}",
                srv["rss_peak_mb"],
                srv["cpu_cores"],
                run["load_generator"]["cpu_cores"],
                run["other_cpu_cores"],
                run.get("idle_servers_cpu_cores"),
            )  # fmt: skip
        )
    kinds = list(s["mix"])
    lines += ["", "Per image kind, p50 / p95 ms:", "", row(*first, *kinds)]
    lines += ["|---|" + "---:|" * (len(first) - 1 + len(kinds))]
    for lead, run in _runs(summary, by_round=rounds > 1):
        stats = [run["stats"].get(f"predict {k}", {}) for k in kinds]
        cells = [f"{k['p50_ms']} / {k['p95_ms']}" if k.get("requests") else None for k in stats]
        lines.append(row(*lead, *cells))
    lines += ["", row("server", "cold start s (each start)", "idle RSS MB"), "|---|---|---:|"]
    for name, server in summary["servers"].items():
        starts = ", ".join(f"{cold_start(t):.2f}" for t in server["cold_start_s"])
        lines.append(row(name, starts, server["idle"]["rss_peak_mb"]))
    for name, result in summary["comparison"].items():
        if "baseline" not in summary["servers"]:
            lines += ["", f"## {name}: the goals (no baseline was served, so no ratios)", ""]
            lines += goal_rows(result["goals"])
            continue
        lines += ["", f"## {name} against the baseline", ""]
        each = ["each round"] if rounds > 1 else []
        lines += [
            row("concurrency", "throughput ratio", *each, "p50 speed-up", "p95 speed-up"),
            "|---:|---:|" + "---:|" * len(each) + "---:|---:|",
        ]
        for users, r in result["vs_baseline"].items():
            per_round = [" / ".join(_times(x) for x in r["throughput_rounds"])] if rounds > 1 else []
            speedups = [_times(r["p50_speedup"]), _times(r["p95_speedup"])]
            lines.append(row(users, _times(r["throughput"]), *per_round, *speedups))
        lines += ["", *goal_rows(result["goals"])]
    return "\n".join(lines) + "\n"


def goal_rows(found: dict[str, Any]) -> list[str]:
    """The goals table: each goal, what was measured, its target and whether it was met ("–": not known)."""
    lines = [row("goal", "measured", "target", "met"), "|---|---:|---:|---|"]
    for key, g in found.items():
        met = "–" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(row(key, g["measured"], g["goal"], met))
    return lines


def skin_environment() -> dict[str, str]:
    """The SKIN_* settings this shell passes to every server: "skin-serve defaults" are not, with them.
    SKIN_LOCUST_* are the load generator's own."""
    found = sorted(os.environ.items())
    return {k: v for k, v in found if k.startswith("SKIN_") and not k.startswith("SKIN_LOCUST_")}


def environment_line(settings: dict[str, Any]) -> list[str]:
    """The summaries' line for skin_environment(); none when the shell set nothing (older summaries: none)."""
    found = settings.get("environment")
    if not found:
        return []
    listed = ", ".join(f"{k}={v}" for k, v in found.items())
    return [f"Set in the environment for every server (a server's own setting above wins): {listed}."]


def _runs(summary: dict[str, Any], *, by_round: bool) -> Iterable[tuple[list[Any], dict[str, Any]]]:
    """(a row's first cells: server, concurrency and, by_round, the round from 1; the run) in table order."""
    for name, server in summary["servers"].items():
        for users, runs in server["runs"].items():
            for i, run in enumerate(runs, 1):
                yield [name, users, *([i] if by_round else [])], run


def finite(minimum: float, *, inclusive: bool = False, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (at least it, ``inclusive``) and at most
    ``maximum``. float() takes "nan" and "inf", which pass every ``<=`` check and fail much later, in
    round() or in sleep()."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        low = number >= minimum if inclusive else number > minimum
        if not (math.isfinite(number) and low and number <= maximum):
            bound = "at least" if inclusive else "above"
            most = f" and at most {maximum:g}" if maximum < math.inf else ""
            raise argparse.ArgumentTypeError(f"want a finite number {bound} {minimum:g}{most}, not {value!r}")
        return number

    return parse


def whole(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(
                f"want a whole number from {minimum} to {maximum}, not {value!r}"
            )
        return number

    return parse


def quiet_machine_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--max-load, --max-other and --max-wait: how quiet the machine must be before measuring."""
    parser.add_argument(
        "--max-load", type=finite(0), default=0.6, help="wait until the 1-min load is below (0.6)"
    )
    parser.add_argument(
        "--max-other",
        type=finite(0),
        default=0.25,
        help=f"before each {what}, wait until other processes use fewer cores than this (0.25)",
    )
    parser.add_argument(
        "--max-wait",
        type=finite(0, inclusive=True),
        default=1200,
        help="seconds to wait for each of those at most (1200)",
    )


def run_cli(prog: str, call: Callable[[Callable[[str], None]], object]) -> int:
    """Run ``call(log)`` for a command line: a failure is one line on stderr and exit 2; Ctrl-C (130) and
    SIGTERM (143) stop the servers and Locust it started and say so in one line."""
    from export.errors import ExportError
    from runtime.bundle import BundleError
    from training.model import ModelError

    try:
        with signals_stop():  # SIGTERM's default would end this process alone, its children left running
            call(lambda message: print(message, file=sys.stderr, flush=True))
    except (BenchError, BundleError, ExportError, ModelError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        line, status = how(interrupt)
        say_stopped(f"{prog}: {line}")
        return status
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m benchmarks.run",
        description="Load-test the runtime and the reference-style baseline with the same Locust settings "
        "and write a summary with ratios.",
    )
    parser.add_argument(
        "--work", default="runs/bench", help="model, bundle, logs and Locust reports (runs/bench)"
    )
    parser.add_argument("--out", default="benchmarks/results", help="summary folder (benchmarks/results)")
    parser.add_argument("--servers", nargs="+", default=["runtime", "baseline"], choices=SERVERS)
    parser.add_argument(
        "--concurrency",
        nargs="+",
        type=whole(1, MAX_USERS),
        default=[1, 4, 8],
        help=f"users per run, each at most {MAX_USERS} (1 4 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs per server at each concurrency, interleaved with the other servers' (1)",
    )
    parser.add_argument("--run-time", type=int, default=30, help="seconds per run (30)")
    parser.add_argument("--cold-starts", type=int, default=3, help="starts timed per server (3)")
    quiet_machine_options(parser, "run")
    parser.add_argument(
        "--bundle",
        help="serve this bundle instead of the benchmark's own (with --checkpoint where baseline is served)",
    )
    parser.add_argument("--checkpoint", help="the same model's checkpoint, which the baseline serves")
    parser.add_argument(
        "--port",
        type=whole(1, 65535),
        help="the first server listens on 127.0.0.1:PORT, the next on PORT+1, ... (default: free ports)",
    )
    args = parser.parse_args(argv)
    return run_cli(
        "benchmarks.run",
        lambda log: run_benchmark(
            work=args.work,
            out=args.out,
            servers_to_run=args.servers,
            concurrency=args.concurrency,
            rounds=args.rounds,
            run_time=args.run_time,
            cold_starts=args.cold_starts,
            max_load=args.max_load,
            max_other=args.max_other,
            max_wait_s=args.max_wait,
            bundle=args.bundle,
            checkpoint=args.checkpoint,
            port=args.port,
            log=log,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
