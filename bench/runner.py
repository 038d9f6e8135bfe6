"""The modes and the order of the sections: what ``python -m bench`` runs.

``run`` measures on an ``Env`` it is given: the CLI's own containerd, or
the integration fixture's (tests/integration/test_bench_smoke.py).
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import asdict, dataclass

from . import downtime, lifecycle, memory, report, storm, throughput
from .env import BenchError, Env

log = logging.getLogger("bench")
SECTION_NAMES = ("downtime", "lifecycle", "memory", "throughput", "storm")


@dataclass(frozen=True, slots=True)
class Config:
    downtime: downtime.Config
    lifecycle: lifecycle.Config
    memory: memory.Config
    throughput: throughput.Config
    storm: storm.Config


MODES = {
    "full": Config(
        downtime.Config(rounds=4, reboots=8, settle=0.2),
        lifecycle.Config(pairs=15),
        memory.Config(counts=(1, 10, 50), settle=2.0),
        throughput.Config(mib=1024, reps=3),
        storm.Config(reboots=200, settle=1.0),
    ),
    "quick": Config(
        downtime.Config(rounds=1, reboots=4, settle=0.2),
        lifecycle.Config(pairs=3),
        memory.Config(counts=(1, 5), settle=1.0),
        throughput.Config(mib=64, reps=1),
        storm.Config(reboots=20, settle=0.5),
    ),
    "smoke": Config(
        downtime.Config(rounds=1, reboots=1, settle=0.05, events=False),
        lifecycle.Config(pairs=1, warmup=False),
        memory.Config(counts=(1,), settle=0.1),
        throughput.Config(mib=2, reps=1),
        storm.Config(reboots=2, settle=0.1),
    ),
}


def run(
    env: Env, mode: str, sections: tuple[str, ...], command: str, argv: list[str]
) -> report.Results:
    """Measure the sections in order; a failed one is noted in results.errors."""
    cfg = MODES[mode]
    results = report.Results(
        mode=mode, command=command, argv=argv, machine=report.machine(),
        config=asdict(cfg),
    )  # fmt: skip
    began = time.monotonic()
    for name in sections:
        log.info("measuring %s", name)
        t = time.monotonic()
        try:
            measure(name, env, cfg, results)
        except (BenchError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            log.error("%s failed: %s", name, exc)
            results.errors.append(f"{name}: {exc}")
        log.info("%s took %.1f s", name, time.monotonic() - t)
    results.seconds = time.monotonic() - began
    results.machine["load average at end"] = report.loadavg()
    return results


def measure(name: str, env: Env, cfg: Config, results: report.Results) -> None:
    if name == "downtime":
        results.figures[name] = downtime.measure(env, cfg.downtime)
    elif name == "lifecycle":
        results.figures[name] = lifecycle.measure(env, cfg.lifecycle)
    elif name == "memory":
        results.figures[name], results.memory_notes = memory.measure(env, cfg.memory)
    elif name == "throughput":
        results.figures[name] = throughput.measure(env, cfg.throughput)
    elif name == "storm":
        results.storm = storm.measure(env, cfg.storm)
