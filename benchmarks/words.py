"""Counts in the summaries and lines, in words: "1 thread", "2 threads"."""

from __future__ import annotations


def count(n: object, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1: "1 round", "3 rounds", "0 rounds"."""
    return f"{n} {word}{'' if n == 1 else 's'}"
