"""Overload run: the runtime driven past saturation. Only 200 and 503 (with Retry-After) should come back,
accepted requests should keep a bounded p99, and the server's memory should stop growing.

1. A closed-loop Locust run (no think time) measures the saturation throughput S (requests per second).
2. A paced run offers FACTOR × S for DURATION seconds: many users, each held to a fixed rate by Locust's
   ``constant_throughput``, so fast 503s do not turn into a flood and slow answers do not lower the load.
   Latencies are recorded per HTTP status; the server's RSS is sampled throughout.

Each run waits for a quiet machine first, as benchmarks.run's runs do (--max-load, --max-other, --max-wait).
Writes OUT/overload.json and OUT/overload.md; stopped part-way after the saturation run, that run as
OUT/overload-stopped.*.

    python -m benchmarks.overload --factor 2 --duration 60
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import (
    MB,
    OtherCpu,
    Sampler,
    load1,
    machine,
    machine_line,
    wait_for_cpu,
    wait_until_quiet,
)
from benchmarks.run import (
    LOCUSTFILE,
    MAX_USERS,
    ROOT,
    BenchError,
    because,
    bundle_classes,
    check_out,
    check_ports,
    environment_line,
    finite,
    free_port,
    keep_stopped,
    locust,
    ok_rps,
    quiet_machine_options,
    read_stats,
    report_flags,
    run_cli,
    save_summary,
    served_model,
    servers,
    skin_environment,
    start,
    stop,
    stopped_heading,
    stopped_note,
    wait_locust,
    warm,
    whole,
)
from benchmarks.words import count
from runtime.cli import OneLineParser

# Per user at most one request a second: an accepted answer can take ~(running + queued) / S seconds, and a
# user waiting on it cannot keep its pace.
USER_RATE = 1.0
# Ten times saturation is answered almost all 503 already; more only multiplies Locust's users (one per
# request/s offered): --factor 100000 started millions of them on a 2-core machine.
MAX_FACTOR = 10.0


def paced_locust(
    base: str, rate: float, users: int, run_time: int, prefix: Path
) -> tuple[dict[str, list[float]], float, dict[str, Any]]:
    """Locust with each of ``users`` paced to ``rate`` tasks/s; returns prediction latencies (ms) by
    HTTP status, the load generator's CPU use in cores, and Locust's statistics (read_stats)."""
    by_status = Path(f"{prefix}_by_status.json")
    by_status.unlink(missing_ok=True)
    env = {**os.environ, "SKIN_LOCUST_RATE": str(rate), "SKIN_LOCUST_BY_STATUS": str(by_status.absolute())}
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", base,
        "-u", str(users), "-r", str(users), "--run-time", f"{run_time}s", "--stop-timeout", "30",
        *report_flags(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    with open(f"{prefix}.log", "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        with Sampler(proc.pid) as sampler:
            wait_locust(proc, run_time + 120, prefix)
    cpu = sampler.summary()["cpu_cores"]
    if not by_status.is_file():
        raise BenchError(
            f"Locust exited with {proc.returncode} and wrote no per-status latencies"
            f"{because(f'{prefix}.log')}; see {prefix}.log"
        )
    latencies = {k: [float(v) for v in vs] for k, vs in json.loads(by_status.read_text()).items()}
    return latencies, cpu, read_stats(Path(f"{prefix}_stats.csv"))


def predictions_served(stats: dict[str, Any]) -> float:
    """Predictions answered 200 per second, from Locust's statistics: its clock, its failures left out."""
    return sum(ok_rps(s) for name, s in stats.items() if name.startswith("predict"))


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(values)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "count": len(values),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(a.max()), 1),
    }


def rss_profile(samples: list[int], interval: float) -> dict[str, Any]:
    """RSS every 10 s (sampled every ``interval`` s), the peak, and its growth over the second half."""
    if not samples:
        return {}
    per_step = max(1, round(10 / interval))
    half = len(samples) // 2
    return {
        "every_10s_mb": [round(s / MB, 1) for s in samples[::per_step]],
        "peak_mb": round(max(samples) / MB, 1),
        "second_half_growth_mb": round((max(samples[half:]) - max(samples[: half + 1])) / MB, 1),
    }


def run_overload(
    *,
    work: str | Path = "runs/bench",
    out: str | Path = "benchmarks/results",
    factor: float = 2.0,
    duration: int = 60,
    saturation_users: int = 4,
    saturation_time: int = 20,
    max_load: float = 0.6,
    max_other: float = 0.25,
    max_wait_s: float = 1200.0,
    port: int | None = None,
    bundle: str | Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    from benchmarks.weights import prepare

    # not 0 < factor < inf: nan passes a `factor <= 0` check and fails only after the saturation run
    if not 0 < factor < math.inf:
        raise BenchError(f"--factor must be a finite number above 0, not {factor}")
    for flag, value in (
        ("--duration", duration),
        ("--saturation-users", saturation_users),
        ("--saturation-time", saturation_time),
    ):
        if value < 1:
            raise BenchError(f"{flag} must be at least 1, not {value}")
    if factor > MAX_FACTOR:
        raise BenchError(f"--factor must be at most {MAX_FACTOR:g}, not {factor:g}")
    if saturation_users > MAX_USERS:
        raise BenchError(f"--saturation-users must be at most {MAX_USERS}, not {saturation_users}")
    check_ports(port, 1)
    work, out = Path(work), Path(out)
    check_out(out)
    check_out(work, "--work")
    own = bundle is None
    if bundle is None:
        checkpoint, bundle = prepare(work, log=log)
    else:
        bundle_classes(bundle)  # a broken bundle is one line now
        checkpoint, bundle = None, Path(bundle)  # the runtime alone is served: it needs no checkpoint
    model = served_model(bundle, own=own)
    (work / "locust").mkdir(parents=True, exist_ok=True)
    quiet = wait_until_quiet(max_load, max_wait_s, log)
    port = port or free_port()
    server = servers(checkpoint, bundle, port)["runtime"]
    log_path = work / "overload-runtime.log"
    log_path.unlink(missing_ok=True)
    proc, ready_s = start(server, port, log_path)
    base = f"http://127.0.0.1:{port}"

    def check_alive(during: str) -> None:  # its connection errors would read as fast failed requests
        if proc.poll() is not None:
            raise BenchError(f"the runtime exited with {proc.returncode} during {during}; see {log_path}")

    summary: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_at_start": quiet,
        "server": {"note": server.note, "ready_s": round(ready_s, 2)},
        "settings": {
            "model": model,
            "environment": skin_environment(),
            "factor": factor,
            "duration_s": duration,
            "saturation_users": saturation_users,
            "max_other_cpu_cores": max_other,
        },
    }
    try:
        warm(base)
        wait_for_cpu(max_other, max_wait_s, log)
        stats, _ = locust(base, saturation_users, saturation_time, work / "locust" / "overload-saturation")
        check_alive("the saturation run")
        saturation = ok_rps(stats["Aggregated"])  # fast errors are no throughput: 2x them would be a flood
        if saturation <= 0:
            raise BenchError("the saturation run served nothing; see the Locust log under WORK/locust/")
        summary["saturation_rps"] = round(saturation, 2)  # the offer below is taken from the unrounded rate
        # What "served" (predictions answered 200) compares with: the saturation above counts /api/info
        # and /api/report too, a tenth of the requests, which overload never refuses.
        summary["saturation_predictions_rps"] = round(predictions_served(stats), 2)
        offered = factor * saturation
        users = max(2, round(offered / USER_RATE))
        if users > MAX_USERS:  # a fast server: the factor cap alone does not bound the users
            raise BenchError(
                f"offering {offered:.0f} req/s takes {users} Locust users, past the {MAX_USERS} one "
                "Locust drives; lower --factor"
            )
        rate = offered / users
        paced_by = f"{count(users, 'user')} × {rate:.2f}/s"
        log(f"saturation {saturation:.1f} req/s; offering {offered:.1f} req/s ({paced_by})")
        wait_for_cpu(max_other, max_wait_s, log)
        other = OtherCpu()
        interval = 0.5
        with Sampler(proc.pid, interval=interval) as sampler:
            latencies, locust_cpu, paced = paced_locust(
                base, rate, users, duration, work / "locust" / "overload"
            )
        check_alive("the overload run")
        rss = rss_profile(sampler.rss, interval)
        used = sampler.summary(duration)
        others = other.cores()
    except BaseException as exc:  # Ctrl-C, SIGTERM, a server that died: the saturation measured is kept
        if "saturation_rps" in summary:
            keep_stopped(
                exc,
                summary,
                lambda: write_summary(summary, out, log, name="overload-stopped"),
                log,
                runs=(1, 2),
            )
        raise
    finally:
        stop(proc)
    total = sum(len(v) for v in latencies.values())
    statuses = {status: percentiles(values) for status, values in sorted(latencies.items())}
    unexpected = {s: v["count"] for s, v in statuses.items() if s not in ("200", "503")}
    summary["server"].update(used, rss=rss)
    summary["settings"].update(users=users, rate_per_user=round(rate, 3))
    summary.update(
        {
            "offered_rps": round(offered, 2),
            # What Locust sent: a user waiting on a slow answer cannot keep its pace; the offer falls short.
            "sent_rps": round(paced["Aggregated"]["rps"], 2),
            "predictions": total,
            # As the saturation's predictions are counted, from Locust's statistics (503s are its failures):
            # the 200s over the duration alone also counted the answers that came after it, and read as more.
            "served_rps": round(predictions_served(paced), 2),
            "by_status": statuses,
            "unexpected_statuses": unexpected,
            "load_generator_cpu_cores": locust_cpu,
            "other_cpu_cores": others,
        }
    )
    write_summary(summary, out, log)
    return summary


def write_summary(
    summary: dict[str, Any], out: Path, log: Callable[[str], None], name: str = "overload"
) -> None:
    summary["load_at_end"] = load1()
    gone = save_summary(out, name, summary, markdown(summary))
    log(f"wrote {out / f'{name}.json'} and {out / f'{name}.md'}{stopped_note(summary)}{gone}")


def markdown(s: dict[str, Any]) -> str:
    m, srv = s["machine"], s["server"]
    lines = [
        f"# Overload run ({s['date']})",
        "",
        *stopped_heading(s, "the saturation below was measured, the overload run was not."),
        machine_line(m),
        *([f"Model: {s['settings']['model']}."] if "model" in s["settings"] else []),  # older runs: none
        f"Load average {s['load_at_start']['load1']:.2f} at the start, {s['load_at_end']:.2f} at the end"
        f"{each_run(s['settings'])}. Server: {srv['note']}.",
        *environment_line(s["settings"]),
        "",
    ]
    saturation = (
        f"Saturation (closed loop, {count(s['settings']['saturation_users'], 'user')}): "
        f"**{s['saturation_rps']:.1f} req/s**"
    )
    if "stopped" in s:
        at = f"{s['saturation_predictions_rps']:.1f} predictions/s of them"
        return "\n".join([*lines, f"{saturation}, {at}.", ""])
    rss = srv["rss"]
    lines += [
        f"{saturation}. Offered for {s['settings']['duration_s']} s: **{s['offered_rps']:.1f} req/s** "
        f"({s['settings']['factor']:g}× saturation; {count(s['settings']['users'], 'user')} paced at "
        f"{s['settings']['rate_per_user']}/s){sent(s)}. Served: {s['served_rps']:.1f} predictions/s (at "
        f"saturation {s['saturation_predictions_rps']:.1f}).",
        "",
        "| status | predictions | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for status, v in s["by_status"].items():
        lines.append(
            f"| {status} | {v['count']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['max_ms']} |"
        )
    lines += [
        "",
        f"Other statuses: {s['unexpected_statuses'] or 'none'}.",
        "",
        f"Server RSS every 10 s (MB): {', '.join(str(x) for x in rss.get('every_10s_mb', []))}; peak "
        f"{rss.get('peak_mb')} MB; growth over the second half {rss.get('second_half_growth_mb')} MB. "
        f"CPU in cores: server {srv['cpu_cores']}, Locust {s['load_generator_cpu_cores']} (it shares the "
        f"machine), other processes {s['other_cpu_cores']}.",
        "",
    ]
    return "\n".join(lines)


def each_run(settings: dict[str, Any]) -> str:
    """ "; each run started once …", as serving.md says it (older summaries did not record it)."""
    if "max_other_cpu_cores" not in settings:
        return ""
    return f"; each run started once other processes used < {settings['max_other_cpu_cores']} cores"


def sent(s: dict[str, Any]) -> str:
    """ "; sent N req/s" (older summaries did not record it), and whether that fell short of the offer."""
    if "sent_rps" not in s:
        return ""
    short = ", short of the offer" if s["sent_rps"] < 0.9 * s["offered_rps"] else ""
    return f"; Locust sent {s['sent_rps']:.1f} req/s{short}"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m benchmarks.overload",
        description="Drive the runtime at a multiple of its saturation throughput; report statuses, latency "
        "of accepted requests and memory.",
    )
    parser.add_argument(
        "--work", default="runs/bench", help="benchmark model, logs and Locust output (runs/bench)"
    )
    parser.add_argument("--out", default="benchmarks/results", help="summary folder (benchmarks/results)")
    parser.add_argument(
        "--factor",
        type=finite(0, maximum=MAX_FACTOR),
        default=2.0,
        help=f"offered load / saturation, at most {MAX_FACTOR:g} (2)",
    )
    parser.add_argument("--duration", type=int, default=60, help="seconds of overload (60)")
    parser.add_argument(
        "--saturation-users",
        type=whole(1, MAX_USERS),
        default=4,
        help=f"closed-loop users to find saturation, at most {MAX_USERS} (4)",
    )
    parser.add_argument("--saturation-time", type=int, default=20, help="seconds of the saturation run (20)")
    quiet_machine_options(parser, "run (saturation, then overload)")
    parser.add_argument(
        "--port", type=whole(1, 65535), help="the runtime listens on 127.0.0.1:PORT (default: a free port)"
    )
    parser.add_argument("--bundle", help="serve this bundle instead of the benchmark's own")
    args = parser.parse_args(argv)
    return run_cli(
        "benchmarks.overload",
        lambda log: run_overload(
            work=args.work,
            out=args.out,
            factor=args.factor,
            duration=args.duration,
            saturation_users=args.saturation_users,
            saturation_time=args.saturation_time,
            max_load=args.max_load,
            max_other=args.max_other,
            max_wait_s=args.max_wait,
            port=args.port,
            bundle=args.bundle,
            log=log,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
