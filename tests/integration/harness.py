"""A private containerd for the integration tests, and ctr to drive it.

Everything containerd keeps lives in one temporary directory: config,
root, state, sockets and log.  Three things are shared with any other
containerd on the machine whatever the config says: shim sockets
(/run/containerd/s), runc state (/run/containerd/runc/<namespace>) and
client FIFOs (/run/containerd/fifo); see the protocol doc, section 8.  So
every call goes through our own namespace and uses ids from ``unique_id``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "rebootshim-test"
IMAGE = "docker.io/library/rebootshim-busybox:latest"
RUNC_RUNTIME = "io.containerd.runc.v2"
SHIM_RUNTIME = "io.containerd.reboot.v2"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CTR_TIMEOUT = 60.0
# Set to keep the temporary directory (log, state) after the session.
KEEP_ENV = "REBOOTSHIM_KEEP_TMP"
PR_SET_PDEATHSIG = 1


def wait_until(
    predicate: Callable[[], bool], timeout: float, step: float = 0.1
) -> bool:
    """Poll predicate until it holds or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def config_toml(tmp: Path) -> str:
    """containerd's config: defaults, but every path under tmp."""

    def q(path: str) -> str:
        return json.dumps(str(tmp / path))  # a TOML basic string

    return f"""version = 2
root = {q("root")}
state = {q("state")}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {q("c.sock")}

[ttrpc]
  address = {q("c.sock.ttrpc")}

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = {q("opt")}
"""


def containerd_env() -> dict[str, str]:
    """Our environment, with /usr/local/bin first so `make install` wins."""
    rest = [p for p in os.environ.get("PATH", "").split(":") if p != "/usr/local/bin"]
    return {**os.environ, "PATH": ":".join(["/usr/local/bin", *rest])}


def die_with_parent() -> None:
    """In the child: get SIGTERM if pytest dies, so no containerd lingers."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below root, deepest first (proc(5) mountinfo)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = re.sub(
                r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]
            )
            if point == str(root) or point.startswith(f"{root}/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_all(root: Path) -> None:
    """Unmount whatever is left under root; detach lazily if busy."""
    for point in mounts_under(root):
        done = subprocess.run(
            ["umount", point], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            log.warning("umount %s: %s; detaching", point, done.stderr.strip())
            subprocess.run(["umount", "--lazy", point], check=False)


class Containerd:
    """One containerd process of our own, and ctr aimed at it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.address = str(tmp / "c.sock")
        self.ttrpc_address = str(tmp / "c.sock.ttrpc")
        self.root_dir = tmp / "root"
        self.state_dir = tmp / "state"
        self.log_path = tmp / "containerd.log"
        self.config_path = tmp / "config.toml"
        self.namespace = NAMESPACE
        self.image = IMAGE
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Containerd pid={pid} address={self.address}>"

    @classmethod
    def start(
        cls, prefix: str = "rebootshim-it-", namespace: str = NAMESPACE
    ) -> Containerd:
        """Start containerd in a fresh temporary directory, image imported
        into ``namespace``."""
        ctrd = cls(Path(tempfile.mkdtemp(prefix=prefix)))
        ctrd.namespace = namespace
        try:
            ctrd.spawn()
            ctrd.wait_ready()
            ctrd.import_image()
        except BaseException:
            ctrd.stop()
            raise
        return ctrd

    def spawn(self) -> None:
        self.config_path.write_text(config_toml(self.tmp))
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.tmp,
                env=containerd_env(),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def wait_ready(self) -> None:
        """Wait until containerd answers `ctr version`."""

        # ctr waits 10 s for a socket that is not there yet, so look first.
        def is_ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited early:\n{self.log_tail()}")
            if not Path(self.address).is_socket():
                return False
            version = ("--connect-timeout", "2s", "version")
            return self.ctr(*version, check=False, timeout=10).returncode == 0

        if not wait_until(is_ready, START_TIMEOUT):
            raise RuntimeError(f"containerd not ready:\n{self.log_tail()}")

    def import_image(self) -> None:
        tarball = self.tmp / "image.tar"
        mkimage = REPO / "tools" / "mkimage.py"
        subprocess.run(
            [sys.executable, str(mkimage), str(tarball), "--name", self.image],
            check=True,
            capture_output=True,
        )
        self.ctr("images", "import", str(tarball))

    def log_tail(self, lines: int = 40) -> str:
        text = (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )
        return "\n".join(text.splitlines()[-lines:])

    def ctr_argv(self, args: tuple[str, ...]) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", self.namespace, *args]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = CTR_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ctr to completion; check=True raises with ctr's stderr shown."""
        done = subprocess.run(
            self.ctr_argv(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def popen_ctr(
        self, *args: str, stdin: int | IO[Any] | None = subprocess.DEVNULL
    ) -> subprocess.Popen[str]:
        """Start ctr (e.g. a foreground `ctr run`) with stdout/stderr piped."""
        return subprocess.Popen(
            self.ctr_argv(args),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def unique_id(self, prefix: str) -> str:
        """A container id no other test or session uses."""
        return f"{prefix}-{secrets.token_hex(4)}"

    def task_status(self, container_id: str) -> str | None:
        """The STATUS column of `ctr tasks ls`, None without a task."""
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return fields[-1]
        return None

    def cleanup_container(self, container_id: str) -> None:
        """Kill and delete the task, then the container; ignore failures."""
        for args in (
            ("tasks", "delete", "--force", container_id),
            ("containers", "delete", container_id),
        ):
            try:
                self.ctr(*args, check=False, timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("ctr %s timed out", " ".join(args))

    def stop(self) -> None:
        """Delete what is left, stop containerd, unmount, remove tmp."""
        if self.proc is not None and self.proc.poll() is None:
            self.cleanup_all()
            self.terminate()
        unmount_all(self.tmp)
        if os.environ.get(KEEP_ENV):
            log.warning("keeping %s", self.tmp)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.tmp.exists():
            log.warning("could not remove all of %s", self.tmp)

    def cleanup_all(self) -> None:
        done = self.ctr("containers", "ls", "--quiet", check=False)
        for container_id in done.stdout.split():
            self.cleanup_container(container_id)

    def terminate(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; only our own pid."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("containerd ignored SIGTERM; killing pid %d", self.proc.pid)
            self.proc.kill()
            self.proc.wait()
