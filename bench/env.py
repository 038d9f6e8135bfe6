"""The benchmark's private containerd and what it asks of it through ctr.

The containerd is the integration harness's (tests/integration/harness.py):
config, root, state, sockets and log in one temporary directory, our own
namespace.  Shims are found through their own sockets: the ``address`` file
in the bundle names the socket, and the shim answers Connect with its pid
(both shims do).  rebootshim's warm zygote is found by the flock it holds
on its lock file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The harness is the package tests/integration, as scripts/demo.py uses it.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from integration.harness import Containerd, wait_until  # noqa: E402
from integration.helpers import shim_pid  # noqa: E402

from .procfs import flock_holder  # noqa: E402
from .stats import RUNTIMES  # noqa: E402

NAMESPACE = "rebootshim-bench"
TMP_PREFIX = "rebootshim-bench-"
POLICY = "io.containerd.reboot.v2.policy=restart:1000/60s"
SLEEP_FOREVER = ("sleep", "1000000")
# "time.tv_sec:  1796402726" / "time.tv_usec: 72823" (busybox adjtimex).
_SEC = re.compile(r"time\.tv_sec:\s+(\d+)")
_USEC = re.compile(r"time\.tv_usec:\s+(\d+)")


class BenchError(Exception):
    """A measurement could not be taken; the message says what was seen."""


@dataclass(frozen=True, slots=True)
class Task:
    pid: int
    status: str


def stamps(text: str) -> list[float]:
    """The CLOCK_REALTIME stamps (seconds) of concatenated adjtimex outputs."""
    secs = [int(s) for s in _SEC.findall(text)]
    usecs = [int(u) for u in _USEC.findall(text)]
    if len(secs) != len(usecs):
        raise BenchError(f"torn adjtimex output: {len(secs)} vs {len(usecs)}")
    return [s + u / 1e6 for s, u in zip(secs, usecs, strict=True)]


class Env:
    """ctr aimed at our containerd, with the ids this benchmark made."""

    def __init__(self, ctrd: Containerd, own: bool) -> None:
        self.ctrd = ctrd
        self.own = own  # we started it, so we stop it
        self.fifo_dir = ctrd.tmp / "bench-fifo"
        self.fifo_dir.mkdir(exist_ok=True)
        self.ids: list[str] = []  # to delete at close
        self.made: list[str] = []  # every id, for the shim log

    @classmethod
    def start(cls) -> Env:
        """A containerd of our own in a fresh temporary directory."""
        return cls(Containerd.start(TMP_PREFIX, NAMESPACE), own=True)

    @property
    def tmp(self) -> Path:
        return self.ctrd.tmp

    def close(self) -> None:
        """Delete every container we made; stop containerd if it is ours."""
        for container_id in self.ids:
            self.ctrd.cleanup_container(container_id)
        self.ids.clear()
        if self.own:
            self.ctrd.stop()

    # -- ctr -------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        container_id = self.ctrd.unique_id(f"bench-{prefix}")
        self.ids.append(container_id)
        self.made.append(container_id)
        return container_id

    def log_ids(self, prefix: str) -> list[str]:
        return [i for i in self.made if i.startswith(f"bench-{prefix}-")]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.ctrd.ctr(*args, check=check, timeout=timeout)

    def argv(self, *args: str) -> list[str]:
        return self.ctrd.ctr_argv(args)

    def run_args(
        self, shim: str, container_id: str, argv: tuple[str, ...], *options: str
    ) -> tuple[str, ...]:
        """``ctr run`` arguments: the same for both shims but the runtime."""
        return (
            "run", "--runtime", RUNTIMES[shim], *options, self.ctrd.image,
            container_id, *argv,
        )  # fmt: skip

    def run_detached(
        self, shim: str, container_id: str, argv: tuple[str, ...], *options: str
    ) -> float:
        """``ctr run -d``; the seconds it took."""
        fifo = ("--fifo-dir", str(self.fifo_dir))
        args = self.run_args(shim, container_id, argv, "--detach", *fifo, *options)
        began = time.monotonic()
        self.ctr(*args)
        return time.monotonic() - began

    def remove(self, container_id: str) -> float:
        """Kill and delete the task, then the container; the seconds it took."""
        began = time.monotonic()
        self.ctr("tasks", "delete", "--force", container_id)
        self.ctr("containers", "delete", container_id)
        took = time.monotonic() - began
        self.forget(container_id)
        return took

    def remove_container(self, container_id: str) -> None:
        """Delete a container whose task is gone already."""
        self.ctr("containers", "delete", container_id)
        self.forget(container_id)

    def forget(self, container_id: str) -> None:
        """The container is deleted already (or never made)."""
        if container_id in self.ids:
            self.ids.remove(container_id)

    def tasks(self) -> dict[str, Task]:
        tasks = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 3:
                tasks[fields[0]] = Task(int(fields[1]), fields[2])
        return tasks

    def task(self, container_id: str) -> Task | None:
        return self.tasks().get(container_id)

    def containers(self) -> list[str]:
        return self.ctr("containers", "ls", "--quiet").stdout.split()

    # -- the container's writable layer and its shim --------------------------

    def upperdir(self, container_id: str) -> Path:
        """The overlayfs upper directory of the container's snapshot."""
        out = self.ctr("snapshots", "mounts", "/unused", container_id).stdout
        found = re.search(r"upperdir=([^,\s]+)", out)
        if not found:
            raise BenchError(f"no upperdir in `ctr snapshots mounts`: {out!r}")
        return Path(found[1])

    def read_layer(self, container_id: str, name: str) -> str:
        path = self.upperdir(container_id) / name.lstrip("/")
        return path.read_text() if path.exists() else ""

    def wait_layer(
        self, container_id: str, name: str, want: str, timeout: float
    ) -> bool:
        """Wait until file name in the writable layer reads ``want``."""
        path = self.upperdir(container_id) / name.lstrip("/")

        def holds() -> bool:
            try:
                return path.read_text().strip() == want
            except FileNotFoundError:
                return False

        return wait_until(holds, timeout, step=0.02)

    def shim_pid(self, container_id: str) -> int:
        """The shim's pid from its Connect reply (runc's and ours answer it)."""
        return shim_pid(self.ctrd, container_id)

    def zygote_pid(self) -> int | None:
        """rebootshim's warm zygote for this containerd, if it is up.

        It holds a flock on its socket's ``.lock``; the socket's name is
        computed the way the shim computes it (launch.zygote_path), from
        this process, which shares containerd's mount namespace and cgroup.
        """
        try:
            from rebootshim import cli, launch
        except ImportError:
            return None
        path = launch.zygote_path(cli.SOCKET_DIR, self.ctrd.address)
        return flock_holder(path + ".lock")

    def shim_log_values(self, container_id: str, msg: str, key: str) -> list[float]:
        """Numbers logged by the shim as ``key=`` on lines ``msg=`` for id."""
        pattern = re.compile(rf"\b{re.escape(key)}=\"?([0-9.]+)")
        values = []
        text = self.ctrd.log_path.read_text(errors="replace")
        for line in text.splitlines():
            mine = f"id={container_id}" in line and f"msg={msg} " in f"{line} "
            if mine and (found := pattern.search(line)):
                values.append(float(found[1]))
        return values
