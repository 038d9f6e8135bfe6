"""Figure 2: start (``ctr run -d`` until RUNNING) and teardown (kill + delete).

Start is the wall time of ``ctr run --detach --fifo-dir DIR --runtime RT
IMAGE ID sleep 1000000``: ctr returns once the shim answered Start, so the
task is RUNNING then (checked, untimed, with ``ctr tasks ls``).  Teardown
is ``ctr tasks delete --force ID`` (SIGKILL, wait for the exit, delete the
task) then ``ctr containers delete ID``, until the container is gone
(checked, untimed).  The shims alternate, in swapped order every pair.

One untimed start and teardown per shim comes first, so that a cold
rebootshim zygote (it exits after 30 s idle) or a cold page cache is not
one of the samples; its times are kept apart in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from .env import SLEEP_FOREVER, BenchError, Env
from .stats import REBOOTSHIM, RUNC, Better, Figure, Target

SHIMS = (REBOOTSHIM, RUNC)


@dataclass(frozen=True, slots=True)
class Config:
    pairs: int  # timed start+teardown per shim
    warmup: bool = True  # one untimed cycle per shim first


@dataclass(frozen=True, slots=True)
class Cycle:
    start: float  # seconds
    teardown: float


def cycle(env: Env, shim: str) -> Cycle:
    container_id = env.new_id("start")
    start = env.run_detached(shim, container_id, SLEEP_FOREVER)
    task = env.task(container_id)
    if task is None or task.status != "RUNNING":
        raise BenchError(f"{shim}: after ctr run -d the task is {task}")
    teardown = env.remove(container_id)
    if container_id in env.containers():
        raise BenchError(f"{shim}: {container_id} still listed after delete")
    return Cycle(start, teardown)


def measure(env: Env, cfg: Config) -> list[Figure]:
    start = Figure(
        "start", "Start: `ctr run -d` until RUNNING", "ms", scale=1e-3,
        target=Target(1.25, Better.LOWER),
    )  # fmt: skip
    teardown = Figure(
        "teardown", "Teardown: `ctr tasks delete -f` + `ctr containers delete`",
        "ms", scale=1e-3,
    )  # fmt: skip
    first = Figure(
        "start-first", "First start of the run (untimed warm-up, not in 'Start')",
        "ms", scale=1e-3, note="one sample; rebootshim's zygote may be cold",
    )  # fmt: skip
    for shim in SHIMS if cfg.warmup else ():
        first.add(shim, cycle(env, shim).start)
    for i in range(cfg.pairs):
        for shim in SHIMS if i % 2 == 0 else SHIMS[::-1]:
            took = cycle(env, shim)
            start.add(shim, took.start)
            teardown.add(shim, took.teardown)
    return [start, teardown, first] if cfg.warmup else [start, teardown]
