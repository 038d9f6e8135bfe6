"""What scripts/demo.py watches and how it reports: no containerd here.

``Report`` prints the story for a human and keeps the score of the checks;
``Stream`` checks the init's output; ``EventWatch`` runs ``ctr events`` in
the background; ``TaskPoller`` polls ``ctr tasks ls`` while a reboot runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The init prints "boot B | pid P | line N" (demo.py, INIT_SCRIPT).
LINE_RE = re.compile(r"^boot (\d+) \| pid (\d+) \| line (\d+)$")
FENCE = ">>> reboot {} requested"
FENCE_RE = re.compile(r"^>>> reboot (\d+) requested$")
# ctr events prints: TIMESTAMP NAMESPACE TOPIC JSON
EVENT_RE = re.compile(r"\s(/\S+)\s(\{.*\})\s*$")
EVENT_FIELDS = ("id", "exec_id", "pid", "exit_status")
Task = tuple[int, str]  # (pid, status) of a row of ctr tasks ls


class Report:
    """Prints the story, and keeps the score of the checks."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.results: list[tuple[str, bool]] = []
        self.sections = 0

    def paint(self, text: str, code: str) -> str:
        """text in an ANSI colour (SGR code), if writing to a terminal."""
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def section(self, title: str) -> None:
        self.sections += 1
        print("\n" + self.paint(f"== {self.sections}. {title} ".ljust(78, "="), "1"))

    def say(self, text: str) -> None:
        print(f"  {text}")

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"  | {line}")

    def command(self, args: Sequence[str]) -> None:
        print(self.paint(f"  $ ctr {shlex.join(args)}", "36"))

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        self.results.append((what, ok))
        mark = self.paint("✓", "32") if ok else self.paint("✗", "31")
        print(f"  {mark} {what}")
        if not ok and why:
            self.block(why)
        return ok

    @property
    def failed(self) -> list[str]:
        return [what for what, ok in self.results if not ok]


# -- the init's output -----------------------------------------------------------


@dataclass(slots=True)
class Stream:
    """Checks the init's output: boots in order, lines without a gap.

    Each boot numbers its lines from 1; the fence of reboot N (written
    into the init's stdout just before ``reboot -f``) must come after
    boot N's first line and before boot N+1's.
    """

    boot: int = 0
    number: int = 0
    lines: dict[int, int] = field(default_factory=dict)
    fences: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, lines: Sequence[str]) -> Stream:
        stream = cls()
        for index, text in enumerate(lines, 1):
            stream.feed(index, text)
        return stream

    def feed(self, index: int, text: str) -> None:
        if line := LINE_RE.match(text):
            self.feed_line(index, int(line[1]), int(line[3]))
        elif fence := FENCE_RE.match(text):
            if int(fence[1]) != self.boot or int(fence[1]) in self.fences:
                self.problems.append(f"line {index}: {text!r} during boot {self.boot}")
            self.fences.add(int(fence[1]))
        else:
            self.problems.append(f"line {index}: unexpected {text!r}")

    def feed_line(self, index: int, boot: int, number: int) -> None:
        if boot == self.boot + 1:
            if number != 1:
                self.problems.append(f"line {index}: boot {boot} starts at {number}")
            if self.boot and self.boot not in self.fences:
                self.problems.append(f"line {index}: boot {boot} before the fence")
        elif boot != self.boot or number != self.number + 1:
            where = f"boot {self.boot} line {self.number}"
            self.problems.append(
                f"line {index}: boot {boot} line {number} after {where}"
            )
        self.boot, self.number = boot, number
        self.lines[boot] = self.lines.get(boot, 0) + 1

    def describe(self) -> str:
        counts = ", ".join(f"boot {b}: {n}" for b, n in sorted(self.lines.items()))
        return f"lines per boot: {counts}; fences: {sorted(self.fences)}"


def around_boot(lines: Sequence[str], boot: int, context: int = 4) -> list[str]:
    """The lines on both sides of boot's first line."""
    first = next(
        (i for i, t in enumerate(lines) if t.startswith(f"boot {boot} |")), len(lines)
    )
    return list(lines[max(0, first - context) : first + context])


# -- ctr events in the background ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    body: dict[str, Any]

    def describe(self) -> str:
        body = dict(self.body)
        if self.topic == "/tasks/exit":
            body.setdefault("exit_status", 0)  # Go's JSON omits a zero
        fields = [f"{k}={body[k]}" for k in EVENT_FIELDS if k in body]
        return f"{self.topic:<20} {' '.join(fields)}"


class EventWatch:
    """``ctr events`` (argv) writing into a file, parsed on demand."""

    def __init__(self, argv: list[str], path: Path) -> None:
        self.path = path
        with open(path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def events(self, container_id: str | None = None) -> list[Event]:
        found = []
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        for line in text.splitlines():
            match = EVENT_RE.search(line)
            try:
                event = Event(match[1], json.loads(match[2])) if match else None
            except ValueError:  # a line still being written
                continue
            if event and container_id in (None, event.body.get("container_id")):
                found.append(event)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def init_exits(events: Sequence[Event], container_id: str) -> list[Event]:
    """/tasks/exit events of the init (their id is the container's)."""
    return [
        e for e in events if e.topic == "/tasks/exit" and e.body["id"] == container_id
    ]


def starts(events: Sequence[Event]) -> list[int]:
    """The pids of the init's /tasks/start events, in order."""
    return [int(e.body["pid"]) for e in events if e.topic == "/tasks/start"]


def is_milestone(event: Event) -> bool:
    """The init's events, and those of the execs that reboot it."""
    if event.topic in ("/tasks/create", "/tasks/start", "/tasks/delete"):
        return True
    process = str(event.body.get("exec_id") or event.body.get("id") or "")
    if event.topic == "/tasks/exit" and process == event.body.get("container_id"):
        return True
    return process.startswith("reboot-") and event.topic != "/tasks/exec-added"


# -- processes -------------------------------------------------------------------


class TaskPoller:
    """Calls probe (a ``ctr tasks ls`` row) back to back in a thread."""

    def __init__(self, probe: Callable[[], Task | None]) -> None:
        self.probe = probe
        self.seen: list[Task | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append(self.probe())

    def stop(self) -> list[Task | None]:
        self._stop.set()
        self._thread.join()
        return self.seen


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains text (a unique temporary path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found
