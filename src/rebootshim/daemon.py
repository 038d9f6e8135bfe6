"""The shim daemon: serve the Task API on fd 3 until Shutdown.

Started by ``start`` with the listening socket as fd 3, stdio on
/dev/null and the bundle as cwd (protocol doc 1.2, 1.3).  Its life is the
task's life to containerd (rule 10), so it stays up across reboots and
exits only after Shutdown with no container left, or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from rebootshim import log as logsetup
from rebootshim.cli import Flags, runc_root, socket_path
from rebootshim.events import Publisher
from rebootshim.reaper import Reaper
from rebootshim.runtime.runc import Runc
from rebootshim.service import SERVICE, TaskService
from rebootshim.ttrpc.server import Server

log = logging.getLogger(__name__)
LISTENER_FD = 3
# Let the Shutdown reply leave before the socket closes.
SHUTDOWN_LINGER = 0.05


def _open_log_fifo(bundle: str) -> None:
    """Point fd 2 at the bundle's log FIFO, never blocking on the open."""
    path = os.path.join(bundle, "log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    os.dup2(fd, 2)
    os.close(fd)


def run(flags: Flags) -> int:
    bundle = os.getcwd()
    _open_log_fifo(bundle)
    logsetup.setup(2, flags.debug, {"namespace": flags.namespace})
    try:
        return asyncio.run(serve(flags, bundle))
    except Exception:
        log.exception("shim failed", extra=logsetup.ctx(id=flags.id))
        return 1


async def serve(flags: Flags, bundle: str) -> int:
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    ttrpc_address = os.environ.get("TTRPC_ADDRESS", f"{flags.address}.ttrpc")
    publisher = Publisher(ttrpc_address, flags.namespace)
    runc = Runc(reaper, runc_root(bundle, flags.namespace))
    service = TaskService(flags.namespace, runc, reaper, publisher)
    server = Server()
    server.register(SERVICE, service.methods())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = socket.socket(fileno=LISTENER_FD)
    serving = asyncio.create_task(server.serve(listener))
    log.info("shim started", extra=logsetup.ctx(id=flags.id, pid=os.getpid()))
    await _until_any(stop, service.shutdown_requested)
    await asyncio.sleep(SHUTDOWN_LINGER)
    await server.close()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await publisher.close(timeout=2.0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(flags.socket or socket_path(flags))
    log.info("shim exiting", extra=logsetup.ctx(id=flags.id))
    return 0


async def _until_any(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
