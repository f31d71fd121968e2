"""This CPU's feature flags from /proc/cpuinfo, read once: bf16.py and int8.py decide from them what runs fast
and exactly here. Stdlib only."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def flags() -> frozenset[str] | None:
    """Every word of /proc/cpuinfo (the x86 ``flags`` lines among them); None where it cannot be read."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
