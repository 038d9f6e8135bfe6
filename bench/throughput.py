"""Figure 4: stdout throughput, SIZE bytes written by the container.

The container runs ``adjtimex > /t0; dd if=/dev/zero bs=1M count=SIZE_MIB
2>/dev/null``: a CLOCK_REALTIME stamp in its writable layer, then SIZE of
zeros to stdout.  The rate is SIZE / (end - stamp), end being the host's
CLOCK_REALTIME when the last byte arrived:

- file: a foreground ``ctr run --log-uri file:///PATH``; the shim writes
  the file itself.  End is the first poll (every 5 ms) that sees PATH at
  SIZE bytes.
- fifo: a foreground ``ctr run --fifo-dir DIR`` (the shim writes the
  FIFO, ctr copies it to its stdout), its stdout a pipe that we splice(2)
  to /dev/null, counting.  End is when the count reaches SIZE.

Both include starting dd (about a millisecond), not starting the
container.  Repetitions alternate the shims, in swapped order each time.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass

from .env import BenchError, Env, stamps
from .stats import REBOOTSHIM, RUNC, Better, Figure, Target

MIB = 1 << 20
SHIMS = (REBOOTSHIM, RUNC)
MODES = ("file", "fifo")
POLL = 0.005


@dataclass(frozen=True, slots=True)
class Config:
    mib: int
    reps: int


def script(cfg: Config) -> tuple[str, ...]:
    dd = f"dd if=/dev/zero bs=1M count={cfg.mib} 2>/dev/null"
    return ("sh", "-c", f"adjtimex > /t0; {dd}")


def timeout(cfg: Config) -> float:
    return 60.0 + cfg.mib / 10  # at least 10 MiB/s


def started_at(env: Env, container_id: str) -> float:
    found = stamps(env.read_layer(container_id, "t0"))
    if len(found) != 1:
        raise BenchError(f"{container_id}: no start stamp in /t0")
    return found[0]


def to_file(env: Env, shim: str, cfg: Config) -> float:
    """Bytes per second through the shim into a file:// log."""
    container_id = env.new_id("out-file")
    path = env.tmp / f"{container_id}.log"
    args = env.run_args(shim, container_id, script(cfg), "--log-uri", f"file://{path}")
    size = cfg.mib * MIB
    proc = subprocess.Popen(env.argv(*args), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout(cfg)
        while not (path.exists() and path.stat().st_size >= size):
            if time.monotonic() > deadline or proc.poll() not in (None, 0):
                raise BenchError(f"{shim}: {path} never reached {size} bytes")
            time.sleep(POLL)
        end = time.time()
        code = proc.wait(timeout(cfg))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0 or path.stat().st_size != size:
        raise BenchError(f"{shim}: ctr run {code}, {path.stat().st_size} bytes")
    rate = size / (end - started_at(env, container_id))
    env.remove_container(container_id)
    path.unlink()
    return rate


def to_fifo(env: Env, shim: str, cfg: Config) -> float:
    """Bytes per second through the shim, a FIFO and ctr into a pipe."""
    container_id = env.new_id("out-fifo")
    fifo = ("--fifo-dir", str(env.fifo_dir))
    args = env.run_args(shim, container_id, script(cfg), *fifo)
    size = cfg.mib * MIB
    proc = subprocess.Popen(
        env.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        count, end = splice_count(proc.stdout.fileno(), size, timeout(cfg))
        code = proc.wait(timeout(cfg))
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0 or count != size:
        raise BenchError(f"{shim}: ctr run {code}, {count} of {size} bytes")
    rate = size / (end - started_at(env, container_id))
    env.remove_container(container_id)
    return rate


def splice_count(fd: int, size: int, limit: float) -> tuple[int, float]:
    """Move fd's bytes to /dev/null until EOF; (count, time count hit size)."""
    null = os.open(os.devnull, os.O_WRONLY)
    count, end = 0, 0.0
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise BenchError(f"no EOF within {limit:.0f} s ({count} bytes)")
            moved = os.splice(fd, null, MIB)
            if moved == 0:
                return count, end
            count += moved
            if count >= size and not end:
                end = time.time()
    finally:
        os.close(null)


def measure(env: Env, cfg: Config) -> list[Figure]:
    figs = {
        mode: Figure(
            f"stdout-{mode}",
            title,
            "MB/s",
            scale=1e6,
            target=Target(0.8, Better.HIGHER),
        )
        for mode, title in (
            ("file", f"Stdout, {cfg.mib} MiB into a `file://` log"),
            ("fifo", f"Stdout, {cfg.mib} MiB through a FIFO read by `ctr`"),
        )
    }
    for rep in range(cfg.reps):
        for shim in SHIMS if rep % 2 == 0 else SHIMS[::-1]:
            figs["file"].add(shim, to_file(env, shim, cfg))
            figs["fifo"].add(shim, to_fifo(env, shim, cfg))
    return list(figs.values())
