"""This CPU's feature flags from /proc/cpuinfo, read once: bf16.py and int8.py decide from them what runs fast
and exactly here. Stdlib only."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path


@functools.cache
def _words() -> frozenset[str] | None:
    """Every word of /proc/cpuinfo (the x86 ``flags`` lines among them); None where it cannot be read."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def any_of(names: Iterable[str]) -> bool | None:
    """Whether this CPU has any of these flags; None where /proc/cpuinfo cannot tell."""
    found = _words()
    return None if found is None else not found.isdisjoint(names)
