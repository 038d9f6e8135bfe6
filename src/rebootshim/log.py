"""logfmt lines into the bundle's ``log`` FIFO, which containerd copies.

containerd opens ``<bundle>/log`` before ``start`` and copies whatever
arrives, raw, into its own log (protocol doc 1.5).  Writes never block:
a full FIFO or a containerd that is down drops the line rather than
wedging the shim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

# The closed set of context fields (STYLE.md rule 5), in output order.
FIELDS = (
    "namespace",
    "id",
    "exec_id",
    "pid",
    "method",
    "topic",
    "signal",
    "exit_status",
    "exit_type",
    "reboot_count",
    "downtime_ms",
    "runtime",
)


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def __init__(self, context: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        micros = int(record.created % 1 * 1_000_000)
        parts = [
            f"time={stamp}.{micros:06d}Z",
            f"level={record.levelname.lower()}",
            f"msg={_quote(record.getMessage())}",
        ]
        values: dict[str, object] = {**self.context, **getattr(record, "ctx", {})}
        parts += [f"{k}={_quote(values[k])}" for k in FIELDS if k in values]
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class NonBlockingHandler(logging.Handler):
    """Writes whole lines to ``fd`` with O_NONBLOCK; drops on EAGAIN/EPIPE."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode(errors="replace")
            os.write(self.fd, line)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass


def setup(fd: int, debug: bool, context: Mapping[str, object]) -> None:
    handler = NonBlockingHandler(fd)
    handler.setFormatter(
        LogfmtFormatter({"runtime": "io.containerd.reboot.v2", **context})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def ctx(**fields: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` for a log call: ``log.info("exited", extra=ctx(pid=1))``."""
    return {"ctx": fields}
