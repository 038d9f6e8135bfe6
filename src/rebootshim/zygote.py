"""A warm process that forks shim daemons: fast starts, shared memory.

Importing the daemon (asyncio, protobuf, the generated modules) costs
about 250 ms and 15 MiB of private memory per shim.  The zygote pays it
once: ``start`` hands it the listening socket (SCM_RIGHTS) with the
daemon's flags, cwd and environment, and it forks a daemon that is ready
at once and shares the imported modules' pages copy-on-write (gc.freeze
keeps the collector from dirtying them).

One zygote per installation (its socket name hashes the interpreter and
the package's files, so edited code never runs stale), serving anyone of
the same uid; it exits after ``IDLE_EXIT`` seconds without a request.
Daemons are double-forked, so they are no children of the zygote, just
as a daemon spawned by ``start`` is none of ``start``'s.  Where no
zygote answers, ``start`` spawns the daemon itself (cli.py) and one
zygote for the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import select
import signal
import socket
import struct
import sys
from typing import cast

from rebootshim.launch import _LEN, GO, MAGIC, READY, bind_private

IDLE_EXIT = 30.0
REQUEST_MAX = 1 << 20


# -- the zygote ---------------------------------------------------------------


def serve(path: str) -> int:
    os.chdir("/")  # not the bundle of the start that spawned us
    lock = _lock(path)
    if lock is None:
        return 0  # another zygote for this path is up
    import rebootshim.daemon  # noqa: F401  (the point: import it once)

    with contextlib.suppress(ImportError):
        import setproctitle  # noqa: F401  (used by every forked daemon)

    listener = _bind(path)
    gc.collect()
    gc.freeze()
    try:
        while select.select([listener], [], [], IDLE_EXIT)[0]:
            conn, _ = listener.accept()
            with conn:
                _answer(conn, listener, lock)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}.lock")  # while still holding it
    return 0


def _lock(path: str) -> int | None:
    fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _bind(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # we hold the lock: whatever is there is stale
    return socket.socket(fileno=bind_private(path, 64).detach())


def _answer(conn: socket.socket, listener: socket.socket, lock: int) -> None:
    # Short: requests are served one at a time, and a client that sends
    # nothing must not hold the others up for long (they fall back).
    conn.settimeout(1.0)
    try:
        if not _is_same_user(conn):
            return
        request, fds = _receive(conn)
    except (OSError, ValueError):
        return
    try:
        if not _has_go(conn):
            return  # the client gave up (closed): do nothing, fork nothing
        # A delete's child keeps the connection: its end is the reply.
        drop = [listener.fileno(), lock]
        if request.get("mode") != "delete":
            drop.append(conn.fileno())
        pid = _fork(request, fds, drop)
        conn.sendall(str(pid).encode())
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)


def _has_go(conn: socket.socket) -> bool:
    """READY, then the client's GO (launch.ask_zygote's handshake)."""
    try:
        conn.sendall(READY)
        return conn.recv(1) == GO
    except OSError:
        return False


def _is_same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _, uid, gid = struct.unpack("iII", creds)
    return (uid, gid) == (os.geteuid(), os.getegid())


Request = dict[str, object]


def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
    """A request and its fds: a daemon's listener, or a delete's stdout and
    stderr (launch.encode_request)."""
    data, fds, _, _ = socket.recv_fds(conn, REQUEST_MAX + _LEN.size, 2)
    try:
        while len(data) < _LEN.size + _LEN.unpack_from(data.ljust(4, b"\0"))[0]:
            more = conn.recv(65536)
            if not more:
                raise ValueError("truncated request")
            data += more
        request = decode_request(data[_LEN.size :])
        if len(fds) != (2 if request["mode"] == "delete" else 1):
            raise ValueError("wrong number of fds")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def decode_request(body: bytes) -> Request:
    fields = body.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 4 or fields[0] != MAGIC or fields[1] not in ("daemon", "delete"):
        raise ValueError("not a zygote request")
    count = int(fields[3])
    args, env = fields[4 : 4 + count], fields[4 + count :]
    if len(args) != count:
        raise ValueError("truncated arguments")
    pairs = dict(entry.partition("=")[::2] for entry in env if entry)
    return {"mode": fields[1], "cwd": fields[2], "args": args, "env": pairs}


def _fork(request: dict[str, object], fds: list[int], drop: list[int]) -> int:
    """Double fork: the child is reparented, like a daemon spawned by start."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(w)
                _become(request, fds, drop)
            os.write(w, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        os.waitpid(child, 0)
        data = os.read(r, 32)
    finally:
        os.close(r)
    if not data:
        raise OSError("daemon fork failed")
    return int(data)


def _become(request: dict[str, object], fds: list[int], drop: list[int]) -> None:
    """In the grandchild: the process ``start`` (a daemon) or containerd (a
    ``delete``) would have made, then the shim's own main()."""
    code = 1
    try:
        # First: setproctitle grows into the environ block, which must
        # still be the original one.
        _retitle(cast(list[str], request["args"]))
        # The collector stays frozen: unfreezing would have the next full
        # collection walk (and so copy) every page shared with the zygote.
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for old in drop:
            os.close(old)
        os.setsid()
        _set_stdio(request.get("mode") == "delete", fds)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(cast(dict[str, str], request["env"]))
        code = _run(str(request["mode"]), cast(list[str], request["args"]))
        sys.stdout.flush()
    finally:
        os._exit(code)


def _run(mode: str, args: list[str]) -> int:
    """The shim's own entry points: a delete runs cleanup directly (not
    cli.main, which would ask a zygote again)."""
    from rebootshim.cli import main, parse_args

    if mode != "delete":
        return main(args)
    from rebootshim.cleanup import delete

    flags = parse_args(args)
    return delete(flags) if flags.action == "delete" else 2


def _set_stdio(is_delete: bool, fds: list[int]) -> None:
    """A daemon: listener on fd 3, stdio /dev/null.  A delete: containerd's
    stdout and stderr of the ``delete`` process, stdin /dev/null."""
    targets = (1, 2) if is_delete else (3,)
    for fd, target in zip(fds, targets, strict=True):
        if fd != target:
            os.dup2(fd, target, inheritable=target != 3)
            os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0,) if is_delete else (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


def _retitle(args: list[str]) -> None:
    """Show the daemon in ps as what it is, not as the zygote it was."""
    title = " ".join([sys.executable, "-m", "rebootshim", *map(str, args)])
    try:
        from setproctitle import setproctitle
    except ImportError:  # optional: only ps output suffers
        return
    setproctitle(title)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
