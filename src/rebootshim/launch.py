"""What ``start`` does, with as few imports as Python allows.

containerd waits for ``start`` before every container, so this module
sticks to builtin modules (``_socket``, not ``socket``, whose enum set-up
alone costs more than the rest of ``start``).  The daemon comes from the
warm zygote (zygote.py) when one answers; otherwise ``start`` spawns it
and, for the next start, a zygote.
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

TYPE_CHECKING = False  # typing and collections.abc cost `start` 2 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

try:  # a builtin module, unlike hashlib's OpenSSL binding
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.12 renamed it
    from hashlib import sha256

__all__ = ["sha256"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_LEN = struct.Struct(">I")
SOL_SOCKET, SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS


def listen(path: str) -> _socket.socket:
    """The daemon's socket, listening before ``start`` prints it (rule 3)."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    if os.path.exists(path):
        if _answers(path):
            raise SystemExit(f"containerd-shim-reboot-v2: shim already runs at {path}")
        os.unlink(path)  # left by a shim that died: nobody answers it
    return bind_private(path, 128)


def bind_private(path: str, backlog: int) -> _socket.socket:
    """A unix socket listening on ``path``, mode 0600 (root's only)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


def _answers(path: str) -> bool:
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def zygote_path(socket_dir: str, address: str) -> str:
    """The zygote for this containerd, as seen from here.

    Keyed by the interpreter and the package files (edited or reinstalled
    code never forks from a stale zygote) and by what a forked process
    inherits from the zygote rather than from containerd: the mount
    namespace and cgroup, and containerd's address (one per instance).
    """
    digest = sha256(f"{sys.executable}\0{address}\0{os.geteuid()}".encode())
    digest.update(str(os.stat("/proc/self/ns/mnt").st_ino).encode())
    with open("/proc/self/cgroup", "rb") as f:
        digest.update(f.read())
    for root, _, files in sorted(os.walk(_PACKAGE)):
        for name in sorted(files):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{stat.st_mtime_ns}".encode())
    return os.path.join(socket_dir, f"rebootshim-zygote-{digest.hexdigest()[:20]}")


def launch_daemon(
    socket_dir: str, address: str, args: Sequence[str], listener: _socket.socket
) -> int:
    """A daemon from the zygote, else a fresh one (and a zygote)."""
    if os.environ.get("REBOOTSHIM_ZYGOTE", "1") != "0":
        path = zygote_path(socket_dir, address)
        pid = ask_zygote(path, args, [listener.fileno()])
        if pid is not None:
            return pid
        spawn_zygote(path)
    return spawn_daemon(args, listener)


MAGIC = "rebootshim-zygote-1"


def encode_request(mode: str, args: Sequence[str]) -> bytes:
    """NUL-separated fields (no json import on this path): magic, mode,
    cwd, the argument count, the arguments, then the environment."""
    env = [f"{k}={v}" for k, v in os.environ.items()]
    fields = [MAGIC, mode, os.getcwd(), str(len(args)), *args, *env]
    body = "\0".join(fields).encode("utf-8", "surrogateescape")
    return _LEN.pack(len(body)) + body


class ZygoteError(Exception):
    """The zygote took the request and then failed: falling back now could
    run it twice, so the caller must fail instead."""


READY, GO = b"R", b"G"


def ask_zygote(
    path: str,
    args: Sequence[str],
    fds: Sequence[int],
    mode: str = "daemon",
    timeout: float = 5.0,
) -> int | None:
    """The pid of the process the zygote at ``path`` forked; None if no
    zygote took the request, so the caller may do the work itself.

    A two-step handshake makes that safe: the zygote answers READY, and
    acts only on our GO.  A request we gave up on (closed before GO, e.g.
    it waited in a busy zygote's queue) is dropped by the zygote, never run
    late.  A ``daemon`` gets ``fds`` = [listener] and its pid comes back at
    once; a ``delete`` gets [stdout, stderr] and the connection ends when
    it has written its reply on them and exited.
    """
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
        rights = [(SOL_SOCKET, SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        conn.sendmsg([encode_request(mode, args)], rights)
        if conn.recv(1) != READY:
            conn.close()
            return None
        conn.sendall(GO)
    except OSError:
        conn.close()
        return None
    return _committed_reply(conn, mode)


def _committed_reply(conn: _socket.socket, mode: str) -> int:
    """After GO: the zygote's reply, or ZygoteError, never None."""
    try:
        conn.settimeout(None if mode == "delete" else 30.0)
        reply = _read_all(conn)
    except OSError as exc:
        raise ZygoteError(f"zygote failed after taking the request: {exc}") from exc
    finally:
        conn.close()
    if not reply.isdigit() or int(reply) <= 0:
        raise ZygoteError(f"zygote failed after taking the request: {reply!r}")
    return int(reply)


def delegate_delete(socket_dir: str, address: str, args: Sequence[str]) -> bool:
    """Have the zygote run ``delete`` on our stdout/stderr: no protobuf or
    asyncio import here (containerd runs ``delete`` after every task)."""
    if os.environ.get("REBOOTSHIM_ZYGOTE", "1") == "0":
        return False
    path = zygote_path(socket_dir, address)
    try:
        return ask_zygote(path, args, [1, 2], mode="delete") is not None
    except ZygoteError:
        return False  # delete is idempotent: running it again is safe


def _read_all(conn: _socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def spawn_daemon(args: Sequence[str], listener: _socket.socket) -> int:
    """Re-exec ourselves without ``start``: listener as fd 3, no stdio, a
    process group of its own (protocol doc 1.2, 1.3)."""
    argv = [sys.executable, "-m", "rebootshim", *args]
    return _spawn(argv, dict(os.environ), listener.fileno(), setsid=False)


def spawn_zygote(path: str) -> None:
    """Start a zygote for ``path`` in the background; never waits for it."""
    argv = [sys.executable, "-m", "rebootshim.zygote", path]
    try:
        _spawn(argv, {"PATH": os.environ.get("PATH", os.defpath)}, None, setsid=True)
    except OSError:
        return  # only the next start is slower (no contextlib: 2.5 ms)


def _spawn(argv: list[str], env: dict[str, str], fd3: int | None, setsid: bool) -> int:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, target) for target in (0, 1, 2)]
        if fd3 is not None:
            actions.append((os.POSIX_SPAWN_DUP2, fd3, 3))
        if setsid:
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0)
    finally:
        os.close(null)
