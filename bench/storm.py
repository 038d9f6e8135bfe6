"""Figure 5: a reboot storm on rebootshim (the runc shim has no reboot).

The init counts its boots in /n (in the writable layer) and prints
"boot N" to a ``file://`` log; boots 1 to R reboot themselves
(``reboot -n -f``), boot R+1 sleeps.  Boot 1 first waits for a SIGUSR1
(``ctr tasks kill --signal SIGUSR1``), sent once the shim has settled and
was measured; so R reboots in a row, all issued by the init.  The policy
annotation restart:1000/60s lifts the storm bound.

Before and after, once the last boot has settled, the shim is measured:
open fds, threads, Rss and Pss, direct children, its descendants outside
the container, and the mounts under the containerd's temporary directory
(as the shim's mount namespace sees them, and as ours does).  Nothing may
grow but Rss, by less than 1 MiB; threads and Pss are shown for
information.  The log must hold "boot 1" to "boot R+1", in order.
Last, for information, the fds the shim holds after 5 ``ctr tasks exec
ID true`` on the same container.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import procfs
from .env import POLICY, BenchError, Env
from .stats import REBOOTSHIM, Check, Figure

MIB = 1 << 20
INIT = """n=$(( $(cat /n 2>/dev/null || echo 0) + 1 )); echo $n > /n; echo "boot $n"
if [ $n -eq 1 ]; then
  go=; trap 'go=1' USR1; while [ -z "$go" ]; do sleep 0.05; done
fi
if [ $n -le {reboots} ]; then reboot -n -f; fi
exec sleep 1000000"""
EXECS = 5


@dataclass(frozen=True, slots=True)
class Config:
    reboots: int
    settle: float  # seconds to let the shim settle before each snapshot


@dataclass(frozen=True, slots=True)
class Snapshot:
    fds: int
    threads: int
    memory: procfs.Memory
    children: int
    own: int
    shim_mounts: int
    host_mounts: int


@dataclass(slots=True)
class Result:
    checks: list[Check]
    figure: Figure
    seconds: float  # the whole storm
    reboots: int


def snapshot(env: Env, shim_pid: int, init_pid: int) -> Snapshot:
    children = procfs.children_map()
    below = procfs.subtree(shim_pid, children) - {shim_pid}
    own = below - procfs.subtree(init_pid, children)
    return Snapshot(
        fds=procfs.fd_count(shim_pid),
        threads=procfs.thread_count(shim_pid),
        memory=procfs.memory(shim_pid),
        children=len(children.get(shim_pid, [])),
        own=len(own),
        shim_mounts=procfs.mounts_under(shim_pid, env.tmp),
        host_mounts=procfs.mounts_under(os.getpid(), env.tmp),
    )


def running_pid(env: Env, container_id: str) -> int:
    task = env.task(container_id)
    if task is None or task.status != "RUNNING":
        raise BenchError(f"storm: the task is {task}")
    return task.pid


def measure(env: Env, cfg: Config) -> Result:
    container_id = env.new_id("storm")
    log = env.tmp / f"{container_id}.log"
    init = ("sh", "-c", INIT.format(reboots=cfg.reboots))
    options = ("--annotation", POLICY, "--log-uri", f"file://{log}")
    env.run_detached(REBOOTSHIM, container_id, init, *options)
    if not env.wait_layer(container_id, "n", "1", 10.0):
        raise BenchError("storm: the first boot did not count itself")
    shim_pid = env.shim_pid(container_id)
    time.sleep(cfg.settle)
    before = snapshot(env, shim_pid, running_pid(env, container_id))
    began = time.monotonic()
    env.ctr("tasks", "kill", "--signal", "SIGUSR1", container_id)
    last = str(cfg.reboots + 1)
    if not env.wait_layer(container_id, "n", last, 30.0 + 2.0 * cfg.reboots):
        n = env.read_layer(container_id, "n").strip()
        raise BenchError(f"storm: boot {n} of {last} after the time bound")
    seconds = time.monotonic() - began
    if env.shim_pid(container_id) != shim_pid:
        raise BenchError("storm: the shim's pid changed")
    time.sleep(cfg.settle)  # also lets the shim close that Connect's socket
    after = snapshot(env, shim_pid, running_pid(env, container_id))
    check_log(log, cfg.reboots + 1)
    execs = exec_fds(env, container_id, shim_pid, cfg.settle)
    logged = env.shim_log_values(container_id, "rebooted", "downtime_ms")
    env.remove(container_id)
    log.unlink()
    figure = Figure(
        "storm-reboot", f"Reboot during the storm of {cfg.reboots}, as timed by"
        " rebootshim (its log's downtime_ms)", "ms",
    )  # fmt: skip
    figure.series(REBOOTSHIM).values = logged
    result = Result(checks(before, after), figure, seconds, cfg.reboots)
    result.checks.append(execs)
    return result


def exec_fds(env: Env, container_id: str, shim_pid: int, settle: float) -> Check:
    """The shim's open fds before and after EXECS short execs."""
    before = procfs.fd_count(shim_pid)
    fifo = ("--fifo-dir", str(env.fifo_dir))
    for i in range(EXECS):
        env.ctr("tasks", "exec", *fifo, "--exec-id", f"x{i}", container_id, "true")
    time.sleep(settle)
    after = procfs.fd_count(shim_pid)
    title = f"open fds of the shim, after {EXECS} `ctr tasks exec ID true`"
    return Check("exec-fds", title, before, after, gate=False)


def check_log(log: os.PathLike[str], boots: int) -> None:
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\n") for line in f]
    want = [f"boot {n}" for n in range(1, boots + 1)]
    if lines != want:
        raise BenchError(f"storm: the log has {len(lines)} lines, not boot 1..{boots}")


def checks(before: Snapshot, after: Snapshot) -> list[Check]:
    b, a = before, after
    return [
        Check("fds", "open fds of the shim", b.fds, a.fds),
        Check("rss", "RSS of the shim (MiB)", b.memory.rss, a.memory.rss, MIB, MIB),
        Check(
            "mounts",
            "mounts under the temp dir (shim's view)",
            b.shim_mounts,
            a.shim_mounts,
        ),
        Check(
            "host-mounts",
            "mounts under the temp dir (host's view)",
            b.host_mounts,
            a.host_mounts,
        ),
        Check("children", "direct children of the shim", b.children, a.children),
        Check("own", "shim descendants outside the container", b.own, a.own),
        Check("threads", "threads of the shim", b.threads, a.threads, gate=False),
        Check(
            "pss",
            "PSS of the shim (MiB)",
            b.memory.pss,
            a.memory.pss,
            scale=MIB,
            gate=False,
        ),
    ]
