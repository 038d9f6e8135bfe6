"""What /proc says about one process: memory, fds, threads, children, mounts.

Read-only.  Processes are found from sockets and locks the benchmark's own
containerd made (bench/env.py); nothing here matches processes by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

KIB = 1024


@dataclass(frozen=True, slots=True)
class Memory:
    """Rss and Pss of one process, in bytes (proc(5) smaps_rollup)."""

    rss: int
    pss: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss)


NO_MEMORY = Memory(0, 0)


def memory(pid: int) -> Memory:
    """Rss and Pss from /proc/PID/smaps_rollup; zeros if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return NO_MEMORY
    fields = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", text, re.M))
    return Memory(int(fields.get("Rss", 0)) * KIB, int(fields.get("Pss", 0)) * KIB)


def children_map() -> dict[int, list[int]]:
    """ppid -> pids of its children, from a scan of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def subtree(pid: int, children: dict[int, list[int]]) -> set[int]:
    """pid and all its descendants in ``children`` (bounded by its size)."""
    found = {pid}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def mounts_under(pid: int, root: Path) -> int:
    """Mount points at or below root in the mount namespace of pid."""
    prefix = f"{root}/"
    count = 0
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = re.sub(
                r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]
            )
            if point == str(root) or point.startswith(prefix):
                count += 1
    return count


def flock_holder(path: str) -> int | None:
    """The pid holding a flock(2) on path, from /proc/locks; None if none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 13882 fe:00:2154741 0 EOF"; dev is hex.
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    with open("/proc/locks", encoding="ascii") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) < 6 or fields[1] != "FLOCK" or fields[2] == "->":
                continue
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return int(fields[4])
    return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
