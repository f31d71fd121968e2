"""Counts in words, and numbers given once in a summary read the same everywhere in it."""

from __future__ import annotations

import json

import pytest

from benchmarks import model_bench, overload, run
from benchmarks.words import count

RESULTS = run.ROOT / "benchmarks/results"


@pytest.mark.parametrize(("n", "said"), [(1, "1 thread"), (2, "2 threads"), (0, "0 threads")])
def test_a_count_is_plural_unless_it_is_one(n: int, said: str) -> None:
    assert count(n, "thread") == said


def test_the_summaries_say_one_thread_one_round_one_user() -> None:
    # --threads 1 --rounds 1 and --saturation-users 1 read "1 threads", "1 rounds", "1 users".
    model = json.loads((RESULTS / "amd-avx2/model.json").read_text())
    model["settings"].update(threads=1, rounds_batch1=1)
    md = model_bench.markdown(model)
    assert "; 1 thread.\n" in md and "Batch 1: the median of 1 round, each timing" in md
    load = json.loads((RESULTS / "avx2-overload/overload.json").read_text())
    load["settings"].update(saturation_users=1, users=1)
    md = overload.markdown(load)
    assert "Saturation (closed loop, 1 user): " in md and "; 1 user paced at " in md
    assert run.describe_served({"threads": 1}).endswith(", 1 thread")


def test_the_cold_start_goal_gives_the_median_as_the_table_gives_the_starts() -> None:
    # Starts of 0.675, 0.66 and 0.9 s: the table said "0.68, 0.66, 0.90" and the goal's median 0.675.
    summary = json.loads((RESULTS / "amd-avx2/serving.json").read_text())
    summary["servers"]["runtime"]["cold_start_s"] = [0.675, 0.66, 0.9]
    summary["comparison"] = run.compare(summary)
    md = run.markdown(summary).splitlines()
    assert "| runtime | 0.68, 0.66, 0.90 | " in "\n".join(md)
    goals = md[md.index("## runtime against the baseline") :]
    assert (
        next(line for line in goals if line.startswith("| cold_start_s |"))
        == "| cold_start_s | 0.68 | 1.5 | yes |"
    )
