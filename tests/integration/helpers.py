"""Helpers shared by the rebootshim integration tests."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from rebootshim.api.task import shim_pb2 as pb
from rebootshim.ttrpc.client import Client

from .harness import SHIM_RUNTIME, Containerd, wait_until

POLICY = "io.containerd.reboot.v2.policy"


def run_detached(
    containerd: Containerd, container_id: str, *argv: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return containerd.ctr(
        "run", "--detach", "--runtime", SHIM_RUNTIME, *fifo_dir(containerd),
        *options, containerd.image,
        container_id, *argv,
    )  # fmt: skip


def fifo_dir(containerd: Containerd) -> tuple[str, str]:
    """ctr's FIFOs in the test's own temp dir: a task whose shim was killed
    leaves them behind, and /run/containerd/fifo is shared."""
    return ("--fifo-dir", str(containerd.tmp / "fifo"))


def task_pid(containerd: Containerd, container_id: str) -> int | None:
    """The PID column of `ctr tasks ls` (read live from the shim's State)."""
    for line in containerd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    return None


def exec_in(
    containerd: Containerd,
    container_id: str,
    *argv: str,
    check: bool = True,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    exec_id = f"x{time.monotonic_ns() % 10**9}"
    return containerd.ctr(
        "tasks", "exec", "--exec-id", exec_id, *fifo_dir(containerd),
        container_id, *argv,
        check=check, timeout=timeout,
    )  # fmt: skip


def reboot_from_exec(containerd: Containerd, container_id: str) -> None:
    """Run `reboot -f` in an exec; it dies with the PID namespace."""
    exec_in(containerd, container_id, "reboot", "-f", check=False)


def wait_new_pid(containerd: Containerd, container_id: str, old: int) -> int:
    """Wait until the task runs again with a pid other than ``old``."""

    def rebooted() -> bool:
        pid = task_pid(containerd, container_id)
        status = containerd.task_status(container_id)
        return pid not in (None, 0, old) and status == "RUNNING"

    assert wait_until(rebooted, 20), containerd.log_tail()
    pid = task_pid(containerd, container_id)
    assert pid is not None
    return pid


@dataclass
class LineReader:
    """Collects the lines a process writes to a pipe, in a thread."""

    stream: object
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for line in self.stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        return wait_until(lambda: predicate(list(self.lines)), timeout)


@dataclass
class Events:
    """`ctr events` in the background, parsed per line."""

    containerd: Containerd

    def __post_init__(self) -> None:
        self.proc = self.containerd.popen_ctr("events")
        self.reader = LineReader(self.proc.stdout)
        time.sleep(0.3)  # let the subscription reach containerd

    def for_container(self, container_id: str) -> list[tuple[str, dict[str, object]]]:
        """(topic, payload) of the events that name ``container_id``."""
        out = []
        for line in list(self.reader.lines):
            # "2026-12-04 16:35:55.14 +0000 UTC <namespace> <topic> <json>"
            parts = line.split(" ", 6)
            if len(parts) < 7:
                continue
            topic, payload = parts[5], parts[6]
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("container_id") == container_id:
                out.append((topic, data))
        return out

    def topics(self, container_id: str) -> list[str]:
        return [topic for topic, _ in self.for_container(container_id)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(path)]


def bundle_dir(containerd: Containerd, container_id: str) -> str:
    return os.path.join(
        containerd.state_dir, "io.containerd.runtime.v2.task", containerd.namespace,
        container_id,
    )  # fmt: skip


def runc_state_dir(containerd: Containerd, container_id: str) -> str:
    return os.path.join(
        containerd.state_dir, "io.containerd.reboot.v2", "runc", containerd.namespace,
        container_id,
    )  # fmt: skip


def shim_address(containerd: Containerd, container_id: str) -> str:
    path = os.path.join(bundle_dir(containerd, container_id), "address")
    with open(path, encoding="utf-8") as f:
        return f.read().strip().removeprefix("unix://")


def shim_call(
    containerd: Containerd,
    container_id: str,
    method: str,
    request: Message,
    response_type: type[Message],
) -> Message:
    """Call the shim's Task service directly over its own socket."""

    async def call() -> Message:
        client = Client(shim_address(containerd, container_id))
        try:
            return await client.call(
                "containerd.task.v2.Task", method, request, response_type, timeout=10
            )
        finally:
            await client.close()

    return asyncio.run(call())


def shim_pid(containerd: Containerd, container_id: str) -> int:
    """The shim daemon's pid, from its own Connect reply."""
    resp = shim_call(
        containerd, container_id, "Connect", pb.ConnectRequest(id=container_id),
        pb.ConnectResponse,
    )  # fmt: skip
    assert isinstance(resp, pb.ConnectResponse)
    return int(resp.shim_pid)


class Pty:
    """A pty pair for a child's terminal: the test reads the master.

    Give ``slave`` to the child as stdin/stdout/stderr, then call
    ``close_slave()`` so that the master reads EOF/EIO once the child is
    gone.  Output is collected in ``data``; ``text`` drops carriage
    returns (the container's pty turns each newline into CR LF).
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        self.data = b""
        self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(
            self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0)
        )

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace").replace("\r", "")

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def read_until(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Read the master until predicate(text) holds, EOF or timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: no slave left open
                return predicate(self.text)
            if not chunk:
                return predicate(self.text)
            self.data += chunk
        return True

    def close(self) -> None:
        self.close_slave()
        os.close(self.master)


def ps_rows(containerd: Containerd, container_id: str) -> dict[int, str]:
    """`ctr tasks ps`: pid -> INFO column ("-", or the exec's ProcessDetails)."""
    rows = {}
    for line in containerd.ctr("tasks", "ps", container_id).stdout.splitlines()[1:]:
        pid, _, info = line.strip().partition(" ")
        rows[int(pid)] = info.strip()
    return rows


def cgroup_dir(pid: int, controller: str) -> str:
    """The host path of ``pid``'s cgroup v1 directory for ``controller``."""
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"))
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited (no process, or only a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
