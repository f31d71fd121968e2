"""The Locust file against a real runtime process: a few seconds, 127.0.0.1, the tiny test bundle.

Proves the benchmark still runs; numbers are never asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run
from tests.server import start_server, stop_server


@pytest.mark.slow
def test_locust_smoke_run_succeeds_and_writes_reports(tiny_bundle: Path, tmp_path: Path) -> None:
    url, proc = start_server(tiny_bundle)
    try:
        stats, generator = run.locust(url, users=2, run_time=3, prefix=tmp_path / "smoke")
        served = run.served_by(url)  # what the summary records next to each runtime server
    finally:
        stop_server(proc)
    assert served == {"openvino": "off", "providers": ["CPUExecutionProvider"], "threads": 1}
    assert run.describe_served(served) == "; served by onnxruntime fp32 (CPUExecutionProvider), 1 thread"
    assert run.served_by(url) is None  # gone: nothing to say, and no traceback
    bf16 = {"openvino": "bf16", "providers": ["OpenVINO CPU"], "threads": 2}
    assert run.describe_served(bf16) == "; served by OpenVINO bf16, 2 threads"
    assert (tmp_path / "smoke_stats.csv").is_file()
    assert (tmp_path / "smoke.html").is_file()
    assert generator["exit_code"] == 0, (tmp_path / "smoke.log").read_text()
    total = stats["Aggregated"]
    assert total["requests"] > 0
    assert total["failures"] == 0, (tmp_path / "smoke_failures.csv").read_text()
    uploads = [name for name, s in stats.items() if name.startswith("predict ") and s["requests"]]
    assert uploads, stats


def test_stats_reader_turns_locust_csv_into_numbers(tmp_path: Path) -> None:
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%"
    )
    rows = [
        "POST,predict thumb 300x220 jpeg,10,1,20,21.5,10,40,1800,5.0,0.5,20,22,24,25,30,35,38,40,40,40,40",
        ",Aggregated,10,1,20,21.5,10,40,1800,5.004999,0.5,20,22,24,25,30,35,38,40,40,40,40",
    ]
    path = tmp_path / "x_stats.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    stats = run.read_stats(path)
    assert stats["Aggregated"] == {
        "requests": 10,
        "failures": 1,
        "rps": 5.004999,  # as Locust wrote it: ratios are taken from it, rounded only where shown
        "p50_ms": 20.0,
        "p95_ms": 35.0,
        "p99_ms": 40.0,
        "mean_ms": 21.5,
    }
    with pytest.raises(run.BenchError):
        run.read_stats(tmp_path / "missing_stats.csv")


def test_a_locust_that_fails_before_writing_is_not_read_from_an_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = tmp_path / "runtime-c1_stats.csv"
    earlier.write_text(
        "Type,Name,Request Count,Failure Count,Average Response Time,Requests/s,50%,95%,99%\n"
        ",Aggregated,10,0,21.5,5.0,20,35,40\n"
    )
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('no images here')\n")  # Locust exits before any statistics
    monkeypatch.setattr(run, "LOCUSTFILE", broken)
    with pytest.raises(run.BenchError) as error:
        run.locust("http://127.0.0.1:1", 1, 60, tmp_path / "runtime-c1")
    # Why, in the line itself: it said only "Locust wrote no statistics (...); see its log beside it".
    log = tmp_path / "runtime-c1.log"
    assert str(error.value) == (
        f"Locust exited with 1 and wrote no statistics: ValueError: no images here; see {log}"
    )


def test_the_overload_pacing_left_in_the_environment_does_not_reach_a_closed_loop_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exported for benchmarks.overload, it paced the serving benchmark's users too: no longer a closed loop.
    by_status = tmp_path / "by_status.json"
    monkeypatch.setenv("SKIN_LOCUST_RATE", "0.1")  # a request per user every 10 s
    monkeypatch.setenv("SKIN_LOCUST_BY_STATUS", str(by_status))
    stats, _ = run.locust(f"http://127.0.0.1:{run.free_port()}", 1, 2, tmp_path / "x")
    assert stats["Aggregated"]["requests"] > 10  # nothing listens there: refused at once, again and again
    assert not by_status.exists()


def test_a_bundle_without_a_report_is_measured_not_failed(tmp_path: Path) -> None:
    # report.json is optional in a bundle: the runtime's 404 no_report counted as a failed request (its
    # throughput then fell by the /api/report share), and the baseline, handed a missing --report, did not
    # start ("baseline exited with 2: … report.json does not exist").
    import subprocess
    import sys

    baseline = run.servers(tmp_path / "m.pt", tmp_path, 1)["baseline"].command
    assert "--report" not in baseline
    (tmp_path / "report.json").write_text("{}")
    baseline = run.servers(tmp_path / "m.pt", tmp_path, 1)["baseline"].command
    assert baseline[baseline.index("--report") + 1] == str(tmp_path / "report.json")
    # Locust patches the interpreter with gevent on import: the tasks are tried in one of their own.
    script = """
import json
from types import SimpleNamespace
from benchmarks import locustfile

class Response:
    def __init__(self, status, body):
        self.status_code, self.body, self.said = status, body, "nothing"
    def json(self):
        return json.loads(self.body)
    def success(self):
        self.said = "success"
    def failure(self, why):
        self.said = why
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False

for status, body in [
    (404, '{"error": {"code": "no_report", "message": "no report"}}'),
    (404, '{"error": {"code": "not_found", "message": "no such path"}}'),
    (404, 'not json'),
    (200, '{}'),
]:
    response = Response(status, body)
    locustfile.report(SimpleNamespace(client=SimpleNamespace(get=lambda *a, **k: response)))
    print(response.said)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=run.ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.split("\n")[:4] == ["success", "HTTP 404", "HTTP 404", "nothing"], done.stderr
