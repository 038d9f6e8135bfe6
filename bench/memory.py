"""Figure 3: memory of N sleeping containers per shim (N = 1, 10, 50).

N containers ``sleep 1000000`` are started with ``ctr run -d``, left to
settle, then every shim is measured from /proc/PID/smaps_rollup: Rss and
Pss of the shim process, and the processes under it split in two: the
container's (its init and descendants, from the task's pid) and the
shim's own (any other descendant: helpers, loggers).

Total PSS per container = Pss of the shim + Pss of its own descendants,
plus, for rebootshim, 1/N of its warm zygote's Pss: the zygote forks every
daemon and lives as long as shims keep starting, so its cost is charged to
the containers (all of it to ours, though other rebootshim users on the
machine share it).  The same total with the container's own processes is
reported beside it.  Pss splits shared pages among all processes mapping
them, so it depends on what else runs on the machine.  The spread shown
is across the N shims of one run; the shims are measured one kind at a
time, the kind going first alternating with N.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import procfs
from .env import SLEEP_FOREVER, BenchError, Env
from .stats import REBOOTSHIM, RUNC, Better, Figure, Target

MIB = 1 << 20
SHIMS = (REBOOTSHIM, RUNC)
TARGET_N = 10  # the N whose total PSS per container has a target


@dataclass(frozen=True, slots=True)
class Config:
    counts: tuple[int, ...]
    settle: float  # seconds between the last start and the measurement


@dataclass(slots=True)
class Sample:
    """What one shim and the processes under it use."""

    shim: procfs.Memory
    own: procfs.Memory  # the shim's descendants outside the container
    container: procfs.Memory
    own_count: int
    zygote_share: float = 0.0  # Pss bytes charged for the zygote

    @property
    def total_pss(self) -> float:
        return self.shim.pss + self.own.pss + self.zygote_share


@dataclass(slots=True)
class Notes:
    """What the report says beside the figures."""

    zygote: dict[int, procfs.Memory] = field(default_factory=dict)  # by N
    zygote_missing: list[int] = field(default_factory=list)  # N without one
    own_counts: dict[str, int] = field(default_factory=dict)


def sample_all(env: Env, shim_pids: dict[str, int]) -> list[Sample]:
    tasks = env.tasks()
    children = procfs.children_map()
    samples = []
    for container_id, shim_pid in shim_pids.items():
        task = tasks.get(container_id)
        if task is None or task.status != "RUNNING":
            raise BenchError(f"{container_id} is not running: {task}")
        below = procfs.subtree(shim_pid, children) - {shim_pid}
        container = procfs.subtree(task.pid, children)
        if not container <= below:
            raise BenchError(f"{container_id}: init {task.pid} is not under the shim")
        own = below - container
        samples.append(
            Sample(
                shim=procfs.memory(shim_pid),
                own=sum_memory(own),
                container=sum_memory(container),
                own_count=len(own),
            )
        )
    return samples


def sum_memory(pids: set[int]) -> procfs.Memory:
    total = procfs.NO_MEMORY
    for pid in pids:
        total = total + procfs.memory(pid)
    return total


def measure_one(env: Env, shim: str, n: int, cfg: Config, notes: Notes) -> list[Sample]:
    shim_pids: dict[str, int] = {}
    try:
        for _ in range(n):
            container_id = env.new_id("mem")
            env.run_detached(shim, container_id, SLEEP_FOREVER)
            shim_pids[container_id] = env.shim_pid(container_id)
        time.sleep(cfg.settle)
        samples = sample_all(env, shim_pids)
        if shim == REBOOTSHIM:
            zygote = env.zygote_pid()
            if zygote is None:
                notes.zygote_missing.append(n)
            else:
                notes.zygote[n] = procfs.memory(zygote)
                for s in samples:
                    s.zygote_share = notes.zygote[n].pss / n
    finally:
        for container_id in shim_pids:
            env.remove(container_id)
    notes.own_counts[f"{shim}, N={n}"] = max(s.own_count for s in samples)
    return samples


def measure(env: Env, cfg: Config) -> tuple[list[Figure], Notes]:
    notes = Notes()
    figs: list[Figure] = []
    for i, n in enumerate(cfg.counts):
        rss = Figure(f"rss-{n}", f"RSS per shim process, N={n}", "MiB", scale=MIB)
        pss = Figure(f"pss-{n}", f"PSS per shim process, N={n}", "MiB", scale=MIB)
        total = Figure(
            f"total-pss-{n}",
            f"Total PSS per container, N={n} (shim + its own children + zygote/N)",
            "MiB", scale=MIB,
            target=Target(3.0, Better.LOWER) if n == TARGET_N else None,
        )  # fmt: skip
        inclusive = Figure(
            f"total-pss-with-container-{n}",
            f"Total PSS per container, N={n}, with the container's processes",
            "MiB", scale=MIB,
        )  # fmt: skip
        for shim in SHIMS if i % 2 == 0 else SHIMS[::-1]:
            for s in measure_one(env, shim, n, cfg, notes):
                rss.add(shim, s.shim.rss)
                pss.add(shim, s.shim.pss)
                total.add(shim, s.total_pss)
                inclusive.add(shim, s.total_pss + s.container.pss)
        figs += [rss, pss, total, inclusive]
    return figs, notes
