"""OOM notifications from a cgroup v1 memory controller.

The v1 interface (Documentation/admin-guide/cgroup-v1/memory.rst, section
"Memory thresholds"/"OOM control"): an eventfd registered through
``cgroup.event_control`` against ``memory.oom_control`` counts OOM events
of that cgroup; it also fires once when the cgroup is removed, which
is told apart by the cgroup directory being gone.  A reboot removes the
cgroup (runc delete) and makes it again, so each boot is watched anew.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

MEMORY_ROOT = "/sys/fs/cgroup/memory"
# After a wake-up, how often and how far apart the kill count is read.
RECHECKS = 20
RECHECK_DELAY = 0.05


def memory_cgroup(pid: int) -> str | None:
    """The v1 memory cgroup directory of ``pid``, or None (v2, gone)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = os.path.join(MEMORY_ROOT, path.lstrip("/"))
            return folder if os.path.isdir(folder) else None
    return None


class OomWatch:
    """Calls ``on_oom()`` on the loop for each OOM kill in one cgroup."""

    def __init__(self, folder: str, on_oom: Callable[[], None]) -> None:
        self.folder = folder
        self._on_oom = on_oom
        self._loop = asyncio.get_running_loop()
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._kills = self._oom_kills() or 0
        try:
            self._register()
        except OSError:
            os.close(self._efd)
            raise
        self._loop.add_reader(self._efd, self._readable)

    def __repr__(self) -> str:
        return f"<OomWatch {self.folder} efd={self._efd}>"

    def _register(self) -> None:
        control = os.path.join(self.folder, "memory.oom_control")
        ofd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(os.path.join(self.folder, "cgroup.event_control"), "w") as f:
                f.write(f"{self._efd} {ofd}")
        finally:
            # The kernel holds its own reference once registered.
            os.close(ofd)

    def _readable(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        self._check(RECHECKS)

    def _check(self, attempts: int) -> None:
        """Publish if oom_kill grew.  The eventfd fires when the cgroup
        goes OOM, a moment before the kill is counted, and also when the
        cgroup is removed (a reboot makes it again at the same path), so
        the count decides, looked at again for a short while."""
        if self._efd < 0:
            return
        kills = self._oom_kills()
        if kills is None:
            self.close()  # the cgroup was removed, not an OOM
        elif kills > self._kills:
            self._kills = kills
            self._on_oom()
        elif attempts > 0:
            self._loop.call_later(RECHECK_DELAY, self._check, attempts - 1)

    def _oom_kills(self) -> int | None:
        """memory.oom_control's oom_kill counter; None if the cgroup is gone."""
        try:
            with open(os.path.join(self.folder, "memory.oom_control")) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            return None
        return None

    def close(self) -> None:
        if self._efd < 0:
            return
        self._loop.remove_reader(self._efd)
        os.close(self._efd)
        self._efd = -1


def watch_oom(pid: int, on_oom: Callable[[], None]) -> OomWatch | None:
    """Watch ``pid``'s memory cgroup; None where there is no v1 one."""
    folder = memory_cgroup(pid)
    if folder is None:
        return None
    try:
        return OomWatch(folder, on_oom)
    except OSError as exc:
        log.warning("cannot watch for oom in %s: %s", folder, exc)
        return None
