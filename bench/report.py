"""docs/benchmarks.md (and a JSON of every sample) from the measurements.

Every number in the markdown is computed here from the samples: medians,
spreads, ratios and whether each target is met.  The method text of each
section is the docstring of the module that measured it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import downtime, lifecycle, memory, storm, throughput
from .stats import DASH, REBOOTSHIM, RUNC, TIMES, Check, Figure

SECTIONS: tuple[tuple[str, str, ModuleType], ...] = (
    ("downtime", "1. Reboot downtime", downtime),
    ("lifecycle", "2. Start and teardown", lifecycle),
    ("memory", "3. Memory", memory),
    ("throughput", "4. Stdout throughput", throughput),
    ("storm", "5. Reboot storm (rebootshim only)", storm),
)


@dataclass(slots=True)
class Results:
    mode: str
    command: str
    argv: list[str]
    machine: dict[str, str]
    config: dict[str, Any]
    figures: dict[str, list[Figure]] = field(default_factory=dict)
    storm: storm.Result | None = None
    memory_notes: memory.Notes | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # measuring
    total_seconds: float = 0.0  # with containerd's start and stop

    def all_figures(self) -> list[Figure]:
        out = [f for figs in self.figures.values() for f in figs]
        return out + ([self.storm.figure] if self.storm else [])


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine() -> dict[str, str]:
    """What the numbers depend on, read now."""
    meminfo = Path("/proc/meminfo").read_text()
    kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo)[1])  # type: ignore[index]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    release = Path("/etc/os-release").read_text()
    pretty = re.search(r'PRETTY_NAME="(.*)"', release)
    repo = Path(__file__).resolve().parents[1]
    commit = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu[1] if cpu else "?",
        "memory": f"{kib / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "os": pretty[1] if pretty else "?",
        "containerd": _run(["containerd", "--version"]),
        "runc": _run(["runc", "--version"]),
        "python": sys.version.split()[0],
        "busybox": _run(["busybox"]),
        "commit": commit + (" (src/ has uncommitted changes)" if dirty else ""),
        "load average at start": loadavg(),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def num(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e5:
        return str(int(value))
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(fig: Figure, shim: str) -> str:
    series = fig.samples.get(shim)
    if not series or not series.values:
        return "—"
    s = fig.scale
    return (
        f"{num(series.median / s)} ({num(series.low / s)}{DASH}{num(series.high / s)})"
    )


def verdict(met: bool | None) -> str:
    return {True: "**yes**", False: "**NO**", None: "—"}[met]


def figure_row(fig: Figure, with_n: bool) -> str:
    ratio = f"{fig.ratio:.2f}{TIMES}" if fig.ratio is not None else "—"
    target = fig.target.describe() if fig.target else "—"
    counts = ""
    if with_n:
        n = [len(fig.samples[s].values) if s in fig.samples else 0 for s in SHIMS]
        counts = f" {n[0]} / {n[1]} |"
    return (
        f"| {fig.title} ({fig.unit}) | {cell(fig, REBOOTSHIM)} | {cell(fig, RUNC)}"
        f" | {ratio} | {target} | {verdict(fig.met)} |{counts}"
    )


SHIMS = (REBOOTSHIM, RUNC)
HEADER = (
    f"| Figure | rebootshim median (min{DASH}max) | runc shim median"
    f" (min{DASH}max) | ratio | target | met |"
)


def figure_table(figs: list[Figure], with_n: bool) -> list[str]:
    head = HEADER + (" samples |" if with_n else "")
    rule = "|---|---|---|---|---|---|" + ("---|" if with_n else "")
    return [head, rule, *(figure_row(f, with_n) for f in figs)]


def storm_summary(result: storm.Result) -> str:
    gates = [c for c in result.checks if c.gate]
    met = all(c.met for c in gates)
    grew = ", ".join(f"{c.key} {check_growth(c)}" for c in gates)
    return (
        f"| Reboot storm: {result.reboots} reboots leak nothing | {grew} | —"
        f" | — | same fds, mounts, children; RSS < +1 MiB | {verdict(met)} |"
    )


def check_growth(c: Check) -> str:
    growth = c.growth / c.scale
    return f"{'+' if growth >= 0 else ''}{num(growth)}"


def storm_table(result: storm.Result) -> list[str]:
    lines = [
        f"{result.reboots} reboots took {result.seconds:.1f} s"
        f" ({result.reboots / result.seconds:.1f} reboots/s, from the SIGUSR1 to"
        " the last boot's count in /n).",
        "",
        "| Measured on the shim | before | after | growth | allowed | met |",
        "|---|---|---|---|---|---|",
    ]
    for c in result.checks:
        allowed = f"≤ +{num(c.limit / c.scale)}" if c.gate else "(information)"
        lines.append(
            f"| {c.title} | {num(c.before / c.scale)} | {num(c.after / c.scale)}"
            f" | {check_growth(c)} | {allowed} | {verdict(c.met)} |"
        )
    return lines


def method(module: ModuleType) -> list[str]:
    doc = (module.__doc__ or "").strip().split("\n", 1)
    return [doc[1].strip() if len(doc) > 1 else "", ""]


def summary_figures(results: Results) -> list[Figure]:
    def wanted(key: str) -> bool:
        if key in ("downtime", "start", "teardown"):
            return True
        return key.startswith(("total-pss-", "stdout-")) and "with" not in key

    return [f for f in results.all_figures() if wanted(f.key)]


def markdown(results: Results) -> str:
    m = results.machine
    out = [
        "# Benchmarks: rebootshim and containerd-shim-runc-v2",
        "",
        "Generated by `bench/` — do not edit by hand, run it again. Both shims run on"
        " one private containerd (its own temporary directory and namespace), with"
        " the same image, the same runc and the same `ctr` arguments but"
        f" `--runtime`. Medians with min{DASH}max over the samples; ratio ="
        " rebootshim / runc shim of the medians. The machine is shared with other"
        " developers' tests: expect noise of ±30 %.",
        "",
        f"- Command: `{results.command}` (runs `{' '.join(results.argv)}`),"
        f" mode **{results.mode}**, run time {results.total_seconds:.0f} s"
        f" ({results.seconds:.0f} s measuring)",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" commit {m['commit']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory,"
        f" kernel {m['kernel']}, {m['os']}",
        f"- Software: {m['containerd']}; {m['runc']}; Python {m['python']};"
        f" {m['busybox']}",
        f"- Load average at start: {m['load average at start']};"
        f" at end: {m.get('load average at end', '?')}",
        "",
        *errors(results),
        "## Summary",
        "",
        *figure_table(summary_figures(results), with_n=False),
    ]
    if results.storm:
        out.append(storm_summary(results.storm))
    out.append("")
    for key, title, module in SECTIONS:
        figs = results.figures.get(key, [])
        if key == "storm" and results.storm:
            figs = [results.storm.figure]
        if not figs:
            continue
        out += [f"## {title}", "", *method(module)]
        out += [*figure_table(figs, with_n=True), ""]
        notes = [f"- {f.title}: {f.note}." for f in figs if f.note]
        out += [*notes, ""] if notes else []
        if key == "storm" and results.storm:
            out += [*storm_table(results.storm), ""]
        if key == "memory" and results.memory_notes:
            out += [*memory_notes(results.memory_notes), ""]
    return "\n".join(out).rstrip() + "\n"


def errors(results: Results) -> list[str]:
    if not results.errors:
        return []
    failed = [f"- {error}" for error in results.errors]
    return ["## Sections that failed", "", *failed, ""]


def memory_notes(notes: memory.Notes) -> list[str]:
    lines = []
    for n, mem in sorted(notes.zygote.items()):
        lines.append(
            f"- N={n}: rebootshim's zygote RSS {num(mem.rss / memory.MIB)} MiB,"
            f" PSS {num(mem.pss / memory.MIB)} MiB (charged 1/{n} per container)."
        )
    for n in notes.zygote_missing:
        lines.append(f"- N={n}: no rebootshim zygote found; the total leaves it out.")
    owns = ", ".join(f"{k}: {v}" for k, v in notes.own_counts.items())
    lines.append(f"- Shim descendants outside the container (most per shim): {owns}.")
    return lines


def to_json(results: Results) -> dict[str, Any]:
    return {
        "mode": results.mode,
        "command": results.command,
        "argv": results.argv,
        "machine": results.machine,
        "config": results.config,
        "seconds": results.seconds,
        "total_seconds": results.total_seconds,
        "errors": results.errors,
        "figures": [f.to_json() for f in results.all_figures()],
        "storm": [c.to_json() for c in results.storm.checks] if results.storm else [],
    }


def write(results: Results, markdown_path: Path, json_path: Path) -> None:
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(markdown(results))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(to_json(results), indent=1) + "\n")
