"""The overload run's parts: paced Locust with latencies by status against a real runtime, and the summaries.

Numbers are never asserted, only that the run works and what it records is sound."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import overload, run
from tests.server import start_server, stop_server


@pytest.mark.slow
def test_paced_locust_records_prediction_latencies_by_status(tiny_bundle: Path, tmp_path: Path) -> None:
    # No queue: anything beyond the one running inference is refused, so 503s may appear; nothing else may.
    url, proc = start_server(tiny_bundle, env={"SKIN_MAX_QUEUE": "0", "SKIN_THREADS": "1"})
    try:
        latencies, cpu, stats = overload.paced_locust(
            url, rate=4.0, users=6, run_time=3, prefix=tmp_path / "o"
        )
    finally:
        stop_server(proc)
    assert latencies.get("200"), (tmp_path / "o.log").read_text()
    assert set(latencies) <= {"200", "503"}, {k: len(v) for k, v in latencies.items()}
    assert all(v > 0 for values in latencies.values() for v in values)
    assert cpu >= 0
    assert stats["Aggregated"]["requests"] > 0
    # Paced: 6 users at 4/s for 3 s cannot send much more than 72 tasks (a few are info/report).
    assert sum(len(v) for v in latencies.values()) <= 6 * 4 * 3 + 6


def test_percentiles_and_rss_profile() -> None:
    stats = overload.percentiles([float(v) for v in range(1, 101)])
    assert stats["count"] == 100 and stats["max_ms"] == 100.0
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == 99.0  # 99.01, to 0.1 ms
    assert overload.percentiles([])["p99_ms"] is None
    mb = overload.MB
    flat = overload.rss_profile([200 * mb] * 40, interval=0.5)
    assert flat["peak_mb"] == 200.0 and flat["second_half_growth_mb"] == 0.0
    assert flat["every_10s_mb"] == [200.0, 200.0]
    growing = overload.rss_profile([(200 + i) * mb for i in range(40)], interval=0.5)
    assert growing["second_half_growth_mb"] == 19.0  # 239 MB at the end against 220 MB at half time


def _without_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, saturation: dict[str, dict[str, float]]
) -> None:
    """run_overload with no model, server or Locust: the saturation run answers ``saturation``."""
    from types import SimpleNamespace

    from benchmarks import weights

    monkeypatch.setattr(weights, "prepare", lambda *args, **kwargs: (tmp_path / "m.pt", tmp_path))
    monkeypatch.setattr(overload, "wait_until_quiet", lambda *args: {"load1": 0.0})
    monkeypatch.setattr(overload, "wait_for_cpu", lambda *args: 0.0)
    monkeypatch.setattr(overload, "served_model", lambda bundle, own: "efficientnet_b3 at 300 px")
    server = SimpleNamespace(pid=os.getpid(), poll=lambda: None, returncode=None)
    monkeypatch.setattr(overload, "start", lambda *args: (server, 0.1))
    monkeypatch.setattr(overload, "stop", lambda proc: None)
    monkeypatch.setattr(overload, "warm", lambda base: None)
    monkeypatch.setattr(overload, "locust", lambda *args: (saturation, {}))


@pytest.mark.parametrize(
    ("saturation", "message"),
    [
        # A server answering every request with a fast error: 1000 "requests" a second, none of them served.
        pytest.param(
            {"Aggregated": {"requests": 5000, "failures": 5000, "rps": 1000.0}},
            "the saturation run served nothing",
            id="errors-alone",
        ),
        # A fast server: --factor is capped at 10, yet its saturation times it asks for thousands of users.
        pytest.param(
            {"Aggregated": {"requests": 3000, "failures": 0, "rps": 300.0}},
            "takes 600 Locust users, past the 256 one Locust drives",
            id="past-one-locust",
        ),
    ],
)
def test_an_offer_it_cannot_make_is_refused_before_the_paced_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saturation: dict[str, dict[str, float]], message: str
) -> None:
    _without_servers(monkeypatch, tmp_path, saturation=saturation)

    def paced_locust(base: str, rate: float, users: int, *args: object) -> None:
        raise AssertionError(f"{users} users offered {rate * users:.0f} req/s")

    monkeypatch.setattr(overload, "paced_locust", paced_locust)
    with pytest.raises(overload.BenchError, match=message):
        overload.run_overload(work=tmp_path / "work", out=tmp_path / "out", log=lambda line: None)


def test_served_predictions_are_set_against_the_saturations_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 30 req/s at saturation, 3 of them /api/info and /api/report: 9 predictions/s served is a third of 27.
    saturation = {
        "Aggregated": {"requests": 300, "failures": 0, "rps": 30.0},
        "predict thumb 300x220 jpeg": {"requests": 270, "failures": 0, "rps": 27.0},
        "info": {"requests": 30, "failures": 0, "rps": 3.0},
    }
    _without_servers(monkeypatch, tmp_path, saturation=saturation)
    # 100 answered 200 in Locust's 11.1 s (the 10 s, then the answers still coming in): 9 a second. Counted
    # as 100 over the 10 s, "served" read 10, and a short run served more than its saturation.
    latencies = {"200": [100.0] * 100, "503": [5.0] * 400}
    paced = {
        "Aggregated": {"requests": 520, "failures": 400, "rps": 46.8},
        "predict thumb 300x220 jpeg": {"requests": 500, "failures": 400, "rps": 45.0},
        "info": {"requests": 20, "failures": 0, "rps": 1.8},
    }
    monkeypatch.setattr(overload, "paced_locust", lambda *args: (latencies, 0.1, paced))
    monkeypatch.setenv("SKIN_MAX_QUEUE", "64")  # from the shell: the server is not "skin-serve defaults"
    summary = overload.run_overload(
        work=tmp_path / "work", out=tmp_path / "out", duration=10, log=lambda line: None
    )
    assert summary["served_rps"] == 9.0 and summary["saturation_predictions_rps"] == 27.0
    assert summary["predictions"] == 500
    md = (tmp_path / "out" / "overload.md").read_text()
    # Offered 2 × 30 = 60 req/s; Locust sent 46.8, which the summary did not say.
    assert summary["sent_rps"] == 46.8
    assert "/s); Locust sent 46.8 req/s, short of the offer. Served: " in md
    assert "Served: 9.0 predictions/s (at saturation 27.0)." in md
    # It said "Machine: AMD EPYC, 2 CPUs", the same for the AVX2 and the AVX-512 machine.
    m = summary["machine"]
    assert f"\nMachine: {m['cpu']}, {m['cpus']} CPUs ({', '.join(m['isa'])}), {m['memory_gb']} GB; " in md
    assert "\nModel: efficientnet_b3 at 300 px.\n" in md
    assert "\nSet in the environment for every server (a server's own setting above wins): " in md
    assert summary["settings"]["environment"]["SKIN_MAX_QUEUE"] == "64"


def test_predictions_served_add_up_locusts_rates_unrounded(tmp_path: Path) -> None:
    # Each kind's rate was rounded to 2 decimals before they were added: four of 1.004/s read 4.0, not 4.02.
    path = tmp_path / "x_stats.csv"
    rows = [f"POST,predict kind {i},100,0,900.0,1.004,900,1000,1100" for i in range(4)]
    header = "Type,Name,Request Count,Failure Count,Average Response Time,Requests/s,50%,95%,99%"
    path.write_text("\n".join([header, *rows, ",Aggregated,400,0,900.0,4.016,900,1000,1100"]) + "\n")
    assert round(overload.predictions_served(run.read_stats(path)), 2) == 4.02


@pytest.mark.parametrize(
    ("argv", "other", "wait"),
    [
        pytest.param([], 0.25, 1200.0, id="run's-defaults"),
        pytest.param(["--max-other", "0.5", "--max-wait", "7"], 0.5, 7.0, id="given"),
    ],
)
def test_each_run_waits_for_a_quiet_machine_as_benchmarks_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], other: float, wait: float
) -> None:
    # It had --max-load alone, waited a fixed 600 s for it, and never looked at other processes' CPU use.
    saturation = {"Aggregated": {"requests": 300, "failures": 0, "rps": 30.0}}
    _without_servers(monkeypatch, tmp_path, saturation=saturation)
    seen: list[tuple[object, ...]] = []

    def quiet(max_load: float, max_wait_s: float, log: object) -> dict[str, float]:
        seen.append(("load", max_load, max_wait_s))
        return {"load1": 0.0}

    def cpu(max_other: float, max_wait_s: float, log: object) -> float:
        seen.append(("cpu", max_other, max_wait_s))
        return 0.0

    def saturation_run(*args: object) -> tuple[dict[str, object], dict[str, object]]:
        seen.append(("saturation run",))
        return saturation, {}

    def overload_run(*args: object) -> tuple[dict[str, list[float]], float, dict[str, object]]:
        seen.append(("overload run",))
        return {"200": [1.0]}, 0.1, saturation

    monkeypatch.setattr(overload, "wait_until_quiet", quiet)
    monkeypatch.setattr(overload, "wait_for_cpu", cpu)
    monkeypatch.setattr(overload, "locust", saturation_run)
    monkeypatch.setattr(overload, "paced_locust", overload_run)
    out = tmp_path / "out"
    assert overload.main(["--work", str(tmp_path / "work"), "--out", str(out), *argv]) == 0
    at = ("cpu", other, wait)
    assert seen == [("load", 0.6, wait), at, ("saturation run",), at, ("overload run",)]
    said = f" at the end; each run started once other processes used < {other} cores. Server: "
    assert said in (out / "overload.md").read_text()


def test_port_puts_the_runtime_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It listened on a free port the system picked: no flag put it where a firewall allows.
    _without_servers(monkeypatch, tmp_path, saturation={})
    monkeypatch.setattr(run, "port_taken", lambda port: False)
    ports = []

    def start(server: object, port: int, log: Path) -> object:
        ports.append(port)
        raise KeyboardInterrupt  # the port is all this test needs

    monkeypatch.setattr(overload, "start", start)
    with pytest.raises(KeyboardInterrupt):
        overload.run_overload(work=tmp_path / "work", out=tmp_path / "out", port=18400, log=lambda line: None)
    assert ports == [18400]


def test_bundle_serves_that_bundle_with_no_checkpoint(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It served the benchmark's own model alone: a bundle of one's own could not be driven past saturation.
    _without_servers(monkeypatch, tmp_path, saturation={})
    from benchmarks import weights

    monkeypatch.setattr(weights, "prepare", None)  # the benchmark's own model is not made
    monkeypatch.setattr(overload, "served_model", run.served_model)
    served = []

    def start(server: run.Server, port: int, log: Path) -> object:
        served.append(server.command)
        raise KeyboardInterrupt  # what it serves is all this test needs

    monkeypatch.setattr(overload, "start", start)
    with pytest.raises(KeyboardInterrupt):
        overload.run_overload(
            work=tmp_path / "work", out=tmp_path / "out", bundle=tiny_bundle, log=lambda line: None
        )
    assert served[0][served[0].index("--bundle") + 1] == str(tiny_bundle)
    with pytest.raises(overload.BenchError, match="no model.onnx there"):
        overload.run_overload(work=tmp_path / "work", out=tmp_path / "out", bundle=tmp_path)


@pytest.mark.parametrize(
    ("stop", "why"),
    [
        pytest.param(KeyboardInterrupt(), "interrupted", id="ctrl-c"),
        pytest.param(overload.BenchError("Locust exited with 1"), "Locust exited with 1", id="locust-failed"),
    ],
)
def test_a_run_stopped_in_the_paced_run_keeps_the_saturation_it_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException, why: str
) -> None:
    # The summary was written only at the end: a Ctrl-C in the minute of overload lost the saturation run.
    saturation = {
        "Aggregated": {"requests": 300, "failures": 0, "rps": 30.0},
        "predict thumb 300x220 jpeg": {"requests": 270, "failures": 0, "rps": 27.0},
    }
    _without_servers(monkeypatch, tmp_path, saturation=saturation)

    def paced_locust(*args: object) -> None:
        raise stop

    monkeypatch.setattr(overload, "paced_locust", paced_locust)
    out = tmp_path / "out"
    lines: list[str] = []
    with pytest.raises(type(stop)):
        overload.run_overload(work=tmp_path / "work", out=out, log=lines.append)
    kept = json.loads((out / "overload-stopped.json").read_text())
    assert kept["stopped"] == {"why": why, "runs_finished": 1, "runs_planned": 2}
    assert kept["saturation_rps"] == 30.0 and kept["saturation_predictions_rps"] == 27.0
    md = (out / "overload-stopped.md").read_text()
    assert f"\n**Stopped part-way ({why}) after 1 of 2 runs**: the saturation below was measured" in md
    assert "\nSaturation (closed loop, 4 users): **30.0 req/s**, 27.0 predictions/s of them.\n" in md
    assert lines[-1].endswith(f"overload-stopped.md (1 of 2 runs, then {why})")
    assert not (out / "overload.json").exists()  # an earlier complete summary there would stay


def test_a_run_stopped_before_the_saturation_was_measured_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_servers(monkeypatch, tmp_path, saturation={})

    def locust(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(overload, "locust", locust)
    with pytest.raises(KeyboardInterrupt):
        overload.run_overload(work=tmp_path / "work", out=tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_a_server_that_died_in_the_overload_run_ends_it_and_keeps_the_saturation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its connection errors came back as status 0 in a summary written as complete: "Served: 0.0".
    saturation = {"Aggregated": {"requests": 300, "failures": 0, "rps": 30.0}}
    _without_servers(monkeypatch, tmp_path, saturation=saturation)
    server, _ = overload.start()  # type: ignore[call-arg]

    def paced_locust(*args: object) -> tuple[dict[str, list[float]], float, dict[str, object]]:
        server.poll = lambda: 9
        server.returncode = 9
        return {"0": [2.0] * 12}, 0.1, {"Aggregated": {"requests": 12, "failures": 12, "rps": 4.8}}

    monkeypatch.setattr(overload, "paced_locust", paced_locust)
    out, work = tmp_path / "out", tmp_path / "work"
    line = f"the runtime exited with 9 during the overload run; see {work / 'overload-runtime.log'}"
    with pytest.raises(overload.BenchError, match="^the runtime exited with 9 during the overload run; "):
        overload.run_overload(work=work, out=out, log=lambda line: None)
    assert json.loads((out / "overload-stopped.json").read_text())["stopped"]["why"] == line
    assert not (out / "overload.json").exists()
