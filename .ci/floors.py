"""Print an extra's floors as pins, one `name==version` a line, for `pip install -c`: CI installs the runtime
extra at the oldest versions pyproject.toml claims to support (make test-runtime-floors).
Standard library only.

    python .ci/floors.py runtime > floors.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# name, [extras], the version clauses (PEP 508 allows them in parentheses), then an environment marker
REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^;()@]*)\)?\s*(?:;(.*))?")
VERSION = re.compile(r"[0-9][0-9A-Za-z.!+-]*")
# clauses that cap or skip versions leave the floor installable; any other one (==, ~=, >, ===) is no floor
CAPS = ("<=", "<", "!=")


class NoPin(ValueError):
    """A requirement that cannot become a pin, or an extra that is not there."""


def pin(requirement: str) -> str:
    """`name>=1.2; marker` -> `name==1.2; marker` (the marker kept: pip still skips it where it says)."""
    match = REQUIREMENT.fullmatch(requirement)
    if match is None:
        raise NoPin(f"{requirement!r}: not a name with version clauses (a URL or a typo?)")
    name, extras, clauses, marker = match.groups()
    floors, others = [], []
    for clause in filter(None, (c.strip() for c in clauses.split(","))):
        if clause.startswith(">="):
            floors.append(clause[2:].strip())
        elif not clause.startswith(CAPS):
            others.append(clause)
    if len(floors) != 1 or others or not VERSION.fullmatch(floors[0]):
        raise NoPin(f"{requirement!r}: has no single '>=' floor to pin")
    line = f"{name}{extras or ''}=={floors[0]}"
    return f"{line}; {marker.strip()}" if marker else line


def pins(pyproject: str, extra: str) -> list[str]:
    """Each requirement of [project.optional-dependencies] ``extra`` in the pyproject.toml text, as a pin."""
    extras = tomllib.loads(pyproject).get("project", {}).get("optional-dependencies", {})
    if extra not in extras:
        raise NoPin(f"no extra {extra!r} (there are: {', '.join(sorted(extras)) or 'none'})")
    return [pin(requirement) for requirement in extras[extra]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extra", help="the optional-dependencies group, e.g. runtime")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT, help="default: the repository's")
    args = parser.parse_args(argv)
    try:
        lines = pins(args.pyproject.read_text(encoding="utf-8"), args.extra)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, NoPin) as e:
        print(f"floors.py: {args.pyproject}: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
