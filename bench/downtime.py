"""Figure 1: reboot downtime, from reboot() inside to the new init's first command.

Both shims run the same container (same image, flags and init script).
The init's first command appends a CLOCK_REALTIME stamp (busybox adjtimex;
this busybox's ``date`` has no %N) to /up; it counts its boots in /n and,
until the last boot, appends a stamp to /down and calls ``reboot -n -f``
(-n: no sync(2) first, which would only add noise).  The stamps are read
from the snapshot's upper directory afterwards, so downtime k is
up[k+1] - down[k], all taken inside the container.

rebootshim restarts the container itself; a foreground ``ctr run`` sees one
exit, status 0, after the last boot.  The runc shim has no reboot: the task
exits with 129 and a client must restart it.  Two ctr clients are measured:

- loop: a foreground ``ctr tasks start --null-io ID`` per boot.  It is
  already in Wait when the task exits, deletes the task itself and returns
  129, and the next one is started at once.  One ctr process per restart.
- events: ``ctr events`` in the background; on the /tasks/exit of the id,
  ``ctr tasks delete ID`` then ``ctr tasks start --detach --null-io ID``.

The container record and its snapshot stay, so the writable layer persists
across restarts for both.  The faster client (by median) is the runc
shim's figure.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .env import POLICY, BenchError, Env, stamps
from .stats import REBOOTSHIM, RUNC, Better, Figure, Target

EXIT_REBOOT = 129  # 128 + SIGHUP: what runc's shim reports for a reboot
OPTIONS = ("--null-io", "--cap-add", "CAP_SYS_BOOT", "--annotation", POLICY)
INIT = """adjtimex >> /up
n=$(( $(cat /n 2>/dev/null || echo 0) + 1 )); echo $n > /n
sleep {settle}
if [ $n -le {reboots} ]; then adjtimex >> /down; reboot -n -f; exit 3; fi
exit 0"""


@dataclass(frozen=True, slots=True)
class Config:
    rounds: int  # containers per client, interleaved
    reboots: int  # reboots per container
    settle: float  # seconds each boot waits before rebooting
    events: bool = True  # also measure the slower `ctr events` client


def script(cfg: Config) -> tuple[str, ...]:
    return ("sh", "-c", INIT.format(settle=cfg.settle, reboots=cfg.reboots))


def timeout(cfg: Config) -> float:
    return 30.0 + cfg.reboots * (cfg.settle + 5.0)


def downtimes_ms(env: Env, container_id: str, reboots: int) -> list[float]:
    """up[k+1] - down[k] for each reboot, from the writable layer."""
    up = stamps(env.read_layer(container_id, "up"))
    down = stamps(env.read_layer(container_id, "down"))
    if len(up) != reboots + 1 or len(down) != reboots:
        raise BenchError(
            f"{container_id}: {len(up)} boots and {len(down)} reboots stamped,"
            f" expected {reboots + 1} and {reboots}"
        )
    return [(up[k + 1] - down[k]) * 1000 for k in range(reboots)]


def run_rebootshim(env: Env, cfg: Config) -> list[float]:
    container_id = env.new_id("down-rs")
    args = env.run_args(REBOOTSHIM, container_id, script(cfg), *OPTIONS)
    done = env.ctr(*args, check=False, timeout=timeout(cfg))
    if done.returncode != 0:
        raise BenchError(f"rebootshim: ctr run exited {done.returncode}: {done.stderr}")
    result = downtimes_ms(env, container_id, cfg.reboots)
    env.remove_container(container_id)
    return result


def run_runc_loop(env: Env, cfg: Config) -> list[float]:
    container_id = env.new_id("down-loop")
    args = env.run_args(RUNC, container_id, script(cfg), *OPTIONS)
    code = env.ctr(*args, check=False, timeout=timeout(cfg)).returncode
    starts = 0
    while code == EXIT_REBOOT and starts <= cfg.reboots:
        starts += 1
        start = ("tasks", "start", "--null-io", container_id)
        code = env.ctr(*start, check=False, timeout=timeout(cfg)).returncode
    if code != 0 or starts != cfg.reboots:
        raise BenchError(f"runc loop: exit {code} after {starts} restarts")
    result = downtimes_ms(env, container_id, cfg.reboots)
    env.remove_container(container_id)
    return result


def run_runc_events(env: Env, cfg: Config) -> list[float]:
    container_id = env.new_id("down-ev")
    events = subprocess.Popen(
        env.argv("events"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(events, lines), daemon=True)
    reader.start()
    try:
        time.sleep(0.3)  # let the subscription reach containerd
        args = env.run_args(RUNC, container_id, script(cfg), "--detach", *OPTIONS)
        env.ctr(*args)
        restarts = _restart_on_exit(env, container_id, lines, cfg)
    finally:
        events.terminate()
        events.wait(10)
        reader.join(10)
    if restarts != cfg.reboots:
        raise BenchError(f"runc events: {restarts} restarts, wanted {cfg.reboots}")
    result = downtimes_ms(env, container_id, cfg.reboots)
    env.remove_container(container_id)
    return result


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)


def _restart_on_exit(
    env: Env, container_id: str, lines: queue.Queue[str], cfg: Config
) -> int:
    """Delete and start the task at each exit with 129; the restarts done."""
    deadline = time.monotonic() + timeout(cfg)
    restarts = 0
    needle = f'"container_id":"{container_id}"'
    while restarts <= cfg.reboots:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"runc events: no exit within {timeout(cfg):.0f} s")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if "/tasks/exit" not in line or needle not in line:
            continue
        env.ctr("tasks", "delete", container_id)
        if f'"exit_status":{EXIT_REBOOT}' not in line:
            return restarts
        env.ctr("tasks", "start", "--detach", "--null-io", container_id)
        restarts += 1
    return restarts


Runner = Callable[[Env, Config], list[float]]
CLIENTS: dict[str, Runner] = {
    REBOOTSHIM: run_rebootshim,
    "loop": run_runc_loop,
    "events": run_runc_events,
}


def measure(env: Env, cfg: Config) -> list[Figure]:
    """Reboot downtime of rebootshim and of both runc clients, interleaved."""
    results: dict[str, list[float]] = {}
    logged: list[float] = []
    names = [n for n in CLIENTS if cfg.events or n != "events"]
    for r in range(cfg.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results.setdefault(name, []).extend(CLIENTS[name](env, cfg))
    for container_id in env.log_ids("down-rs"):
        logged += env.shim_log_values(container_id, "rebooted", "downtime_ms")
    return figures(results, logged)


def figures(results: dict[str, list[float]], logged: list[float]) -> list[Figure]:
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    clients = [name for name in ("loop", "events") if name in results]
    best = min(clients, key=lambda name: median(results[name]))
    label = {
        "loop": "a foreground `ctr tasks start` per boot",
        "events": "`ctr events`, then `ctr tasks delete` + `ctr tasks start -d`",
    }
    main = Figure(
        "downtime", "Reboot downtime", "ms",
        target=Target(0.5, Better.LOWER),
        note=f"the runc shim's figure is its faster client: {label[best]}",
    )  # fmt: skip
    main.series(REBOOTSHIM).values = results[REBOOTSHIM]
    main.series(RUNC).values = results[best]
    out = [main]
    for other in clients:
        if other == best:
            continue
        title = f"Reboot downtime, runc shim restarted by {label[other]}"
        alt = Figure(f"downtime-{other}", title, "ms", note="the slower client")
        alt.series(RUNC).values = results[other]
        out.append(alt)
    if logged:
        own = Figure(
            "downtime-shim-log",
            "Reboot as timed by rebootshim itself (its log's downtime_ms)",
            "ms", note="from the reaper's exit to `runc start` returning",
        )  # fmt: skip
        own.series(REBOOTSHIM).values = logged
        out.append(own)
    return out
