"""Just enough of a Dockerfile reader for the deploy tests (no Docker engine on these machines).

Joins continued lines, drops comments, splits instructions into stages, and reads the exec (JSON) form.
Also a .dockerignore matcher with Docker's rules: paths relative to the context, ``**`` for any depth,
``!`` re-includes, the last matching pattern wins, and a pattern that matches a folder excludes what is in it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the line, continuations joined

    def exec_form(self) -> list[str]:
        """["a", "b"] → ['a', 'b']; anything else → shell words (what /bin/sh -c would see)."""
        text = self.args.strip()
        # HEALTHCHECK options come before CMD
        text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text) if self.keyword == "HEALTHCHECK" else text
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return shlex.split(text)

    def flags(self) -> dict[str, str]:
        """Leading --name=value options (COPY --from=build, HEALTHCHECK --interval=30s)."""
        return dict(re.findall(r"(?:^|\s)--([\w-]+)=(\S+)", self.args.split(" CMD ", 1)[0]))


@dataclass
class Stage:
    base: str  # the image, ARG defaults substituted
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", inst.args):
                values[key] = value.strip('"')
        return values


def instructions(text: str) -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comments inside a continued instruction are dropped
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), re.sub(r"\s+", " ", args).strip()))
    return result


def stages(path: str | Path) -> list[Stage]:
    """The build stages in order; the last one is what `docker build` produces by default."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for inst in instructions(Path(path).read_text(encoding="utf-8")):
        if inst.keyword == "ARG" and not found:
            name, _, default = inst.args.partition("=")
            args[name] = default
        elif inst.keyword == "FROM":
            words = inst.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(found))
            found.append(Stage(base=base, name=name))
        elif found:
            found[-1].instructions.append(inst)
    return found


def copy_sources(stage: Stage) -> list[str]:
    """Context paths that COPY reads (not COPY --from=another stage)."""
    sources: list[str] = []
    for inst in stage.all("COPY"):
        if "from" in inst.flags():
            continue
        words = [w for w in shlex.split(inst.args) if not w.startswith("--")]
        sources += words[:-1]
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path: str | Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes?, regex) for each .dockerignore line, in order."""
    rules = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        rules.append((not include, _pattern_regex(pattern.strip("/").removeprefix("./"))))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], relpath: str) -> bool:
    """Whether the builder never sees ``relpath`` (a file or folder, relative to the context)."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    verdict = False
    for excludes, regex in rules:  # a rule matches the path or a folder above it; the last match wins
        if any(regex.match(prefix) for prefix in prefixes):
            verdict = excludes
    return verdict
