"""Samples, figures and targets: the numbers the report is made of.

A ``Figure`` holds the samples of both shims for one quantity; its ratio
(rebootshim / runc shim, of the medians) and whether the target is met
are computed from them, never written down.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

REBOOTSHIM = "rebootshim"
RUNC = "runc shim"
DASH = "\u2013"  # en dash, for ranges
TIMES = "\u00d7"  # multiplication sign, for ratios
RUNTIMES = {REBOOTSHIM: "io.containerd.reboot.v2", RUNC: "io.containerd.runc.v2"}


class Better(StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on the ratio rebootshim / runc shim."""

    ratio: float
    better: Better

    def met(self, ratio: float) -> bool:
        if self.better is Better.LOWER:
            return ratio <= self.ratio
        return ratio >= self.ratio

    def describe(self) -> str:
        op = "≤" if self.better is Better.LOWER else "≥"
        return f"{op} {self.ratio:g}{TIMES}"


@dataclass(slots=True)
class Series:
    """Repeated measurements of one quantity for one shim."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def well_formed(self) -> bool:
        return bool(self.values) and all(v > 0 for v in self.values)


@dataclass(slots=True)
class Figure:
    """One row of the report: a quantity measured on both shims (or one)."""

    key: str
    title: str
    unit: str
    scale: float = 1.0  # divide samples by this to show them in ``unit``
    target: Target | None = None
    note: str = ""
    samples: dict[str, Series] = field(default_factory=dict)

    def series(self, shim: str) -> Series:
        return self.samples.setdefault(shim, Series())

    def add(self, shim: str, value: float) -> None:
        self.series(shim).add(value)

    @property
    def ratio(self) -> float | None:
        ours, theirs = self.samples.get(REBOOTSHIM), self.samples.get(RUNC)
        if not ours or not theirs or not ours.values or not theirs.values:
            return None
        if theirs.median == 0:
            return None
        return ours.median / theirs.median

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return self.target.met(ratio)

    def well_formed(self, shims: tuple[str, ...]) -> bool:
        return all(s in self.samples and self.samples[s].well_formed() for s in shims)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "scale": self.scale,
            "target": asdict(self.target) if self.target else None,
            "ratio": self.ratio,
            "met": self.met,
            "samples": {shim: s.values for shim, s in self.samples.items()},
        }


@dataclass(slots=True)
class Check:
    """A before/after comparison of the reboot storm (rebootshim only)."""

    key: str
    title: str
    before: float
    after: float
    # The growth allowed: after - before must be <= limit (0 = unchanged).
    limit: float = 0.0
    scale: float = 1.0  # divide by this to show before and after
    gate: bool = True  # False: shown for information, no target

    @property
    def growth(self) -> float:
        return self.after - self.before

    @property
    def met(self) -> bool | None:
        return self.growth <= self.limit if self.gate else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "growth": self.growth, "met": self.met}
