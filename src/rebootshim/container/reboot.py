"""The reboot policy: pure decisions, no I/O.

reboot(2) in a PID namespace other than the host's kills the namespace
init, and the parent sees it "killed by SIGHUP" for RESTART and "killed by
SIGINT" for POWER_OFF/HALT (reboot(2), "Behavior inside PID namespaces";
reboot-prior-art.md section 1).  A handler-less init ignores a SIGHUP sent
from outside its namespace (pid_namespaces(7)), so a SIGHUP death marks a
reboot, unless the shim itself delivered that signal through Kill.
"""

from __future__ import annotations

import re
import signal
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from rebootshim.errors import InvalidArgument

ANNOTATION = "io.containerd.reboot.v2.policy"
DEFAULT_MAX_REBOOTS = 10
DEFAULT_WINDOW = 60.0
_GRAMMAR = "exit | restart | restart:N/DURATION (e.g. restart:5/60s, restart:5/2m)"
_BOUND = re.compile(r"^(\d+)/(\d+(?:\.\d+)?)(s|m|h)?$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Mode(StrEnum):
    RESTART = "restart"
    EXIT = "exit"


class ExitKind(StrEnum):
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class Policy:
    """What to do when the init reboots, and the storm bound."""

    mode: Mode = Mode.RESTART
    max_reboots: int = DEFAULT_MAX_REBOOTS
    window: float = DEFAULT_WINDOW
    explicit: bool = False  # set by the annotation rather than defaulted


def parse_policy(annotations: Mapping[str, str]) -> Policy:
    """Read the policy annotation; InvalidArgument names the allowed values."""
    raw = annotations.get(ANNOTATION)
    if raw is None:
        return Policy()
    value = raw.strip().lower()
    if value == Mode.EXIT:
        return Policy(mode=Mode.EXIT, explicit=True)
    if value == Mode.RESTART:
        return Policy(explicit=True)
    if value.startswith(Mode.RESTART + ":"):
        match = _BOUND.match(value[len(Mode.RESTART) + 1 :])
        if match:
            count, amount, unit = match.groups()
            window = float(amount) * _UNITS[unit]
            if int(count) >= 1 and window > 0:
                return Policy(Mode.RESTART, int(count), window, explicit=True)
    raise InvalidArgument(
        f"invalid annotation {ANNOTATION}={raw!r}: allowed values are {_GRAMMAR}"
    )


def classify(status: int, owns_pid_ns: bool, signals_sent: Collection[int]) -> ExitKind:
    """What an init's raw wait status means.

    ``signals_sent`` are the signals the shim delivered to the init (Kill
    RPCs); a death by one of them is a plain exit, never a reboot.
    """
    if not owns_pid_ns or not _killed_by(status):
        return ExitKind.EXIT
    sig = _killed_by(status)
    if sig in signals_sent:
        return ExitKind.EXIT
    if sig == signal.SIGHUP:
        return ExitKind.REBOOT
    if sig == signal.SIGINT:
        return ExitKind.POWEROFF
    return ExitKind.EXIT


def _killed_by(status: int) -> int:
    # os.WIFSIGNALED/WTERMSIG without importing os for a pure module.
    sig = status & 0x7F
    return sig if sig not in (0, 0x7F) else 0


class StormWindow:
    """Counts reboots in a sliding window; refuses the one too many."""

    def __init__(self, max_reboots: int, window: float) -> None:
        self.max_reboots = max_reboots
        self.window = window
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a reboot at ``now``; False if it exceeds the bound."""
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) >= self.max_reboots:
            return False
        self._times.append(now)
        return True
