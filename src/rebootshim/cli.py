"""containerd-shim-reboot-v2: the ``start`` and ``delete`` subcommands and
the daemon (protocol doc section 1).

``start`` must be quick and print nothing but the address, so this module
imports only what ``start`` needs; the daemon's machinery is imported
when the daemon runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "0.1.0"
RUNTIME = "io.containerd.reboot.v2"
SOCKET_DIR = "/run/containerd/s"
_VALUE_FLAGS = ("namespace", "address", "publish-binary", "id", "bundle", "socket")
_BOOL_FLAGS = ("debug", "v", "version")


class UsageError(Exception):
    pass


@dataclass(slots=True)
class Flags:
    namespace: str = ""
    address: str = ""
    publish_binary: str = ""
    id: str = ""
    bundle: str = ""
    socket: str = ""
    debug: bool = False
    version: bool = False
    action: str = ""


def parse_args(argv: Sequence[str]) -> Flags:
    """Go ``flag`` syntax: -name value, --name value, -name=value."""
    flags = Flags()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg in ("-", "--"):
            if flags.action:
                raise UsageError(f"unexpected argument {arg!r}")
            flags.action = arg
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            _set_bool(flags, name, value if eq else "true")
        elif name in _VALUE_FLAGS:
            if not eq:
                if not args:
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args.pop(0)
            setattr(flags, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
    if flags.action not in ("", "start", "delete"):
        raise UsageError(f"unknown action {flags.action!r}")
    return flags


def _set_bool(flags: Flags, name: str, value: str) -> None:
    if value not in ("true", "false", "1", "0"):
        raise UsageError(f"invalid boolean value {value!r} for -{name}")
    on = value in ("true", "1")
    if name == "debug":
        flags.debug = on
    else:
        flags.version = on


def socket_path(flags: Flags) -> str:
    """The runc shim's naming, so ``ctr shim`` can talk to us too."""
    key = f"{flags.address}/{flags.namespace}/{flags.id}".encode()
    return os.path.join(SOCKET_DIR, hashlib.sha256(key).hexdigest())


def runc_root(bundle: str, namespace: str) -> str:
    """runc's state dir, under this containerd's own state dir.

    The bundle is <state>/io.containerd.runtime.v2.task/<ns>/<id>; keeping
    runc state beside it keeps two containerds on one machine apart.
    """
    state = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(bundle))))
    return os.path.join(state, RUNTIME, "runc", namespace)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"containerd-shim-reboot-v2: {exc}", file=sys.stderr)
        return 2
    if flags.version:
        print(f"containerd-shim-reboot-v2 {VERSION} ({RUNTIME})")
        return 0
    if not flags.namespace or not flags.id:
        print(
            "containerd-shim-reboot-v2: -namespace and -id are required",
            file=sys.stderr,
        )
        return 2
    if flags.action == "start":
        return start(flags)
    if flags.action == "delete":
        from rebootshim.cleanup import delete

        return delete(flags)
    from rebootshim.daemon import run

    return run(flags)


def start(flags: Flags) -> int:
    """Listen, write ``address``, spawn the daemon, print the address."""
    _drain_stdin()
    path = flags.socket or socket_path(flags)
    listener = _listen(path)
    address = f"unix://{path}"
    try:
        _write_atomic(os.path.join(os.getcwd(), "address"), address)
        daemon = _spawn_daemon(flags, listener)
    except BaseException:
        # Leave no socket nobody serves (containerd runs `delete` next).
        os.unlink(path)
        raise
    finally:
        listener.close()
    _raise_oom_score(daemon)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _drain_stdin() -> None:
    # Runtime options (an Any) may arrive on stdin; the shim needs none of
    # them yet, and in 2.3+ they are another message, so read and ignore.
    try:
        if not os.isatty(0):
            os.read(0, 1 << 20)
    except OSError:
        pass


def _listen(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    if os.path.exists(path):
        # A leftover of a crashed shim for the same id: nobody answers it.
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            raise SystemExit(
                f"containerd-shim-reboot-v2: shim already running at {path}"
            )
        except OSError:
            os.unlink(path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _spawn_daemon(flags: Flags, listener: socket.socket) -> int:
    """Re-exec ourselves without ``start``: listener on fd 3, no stdio."""
    args = [
        sys.executable,
        "-m",
        "rebootshim",
        "-namespace",
        flags.namespace,
        "-id",
        flags.id,
        "-address",
        flags.address,
    ]
    if flags.publish_binary:
        args += ["-publish-binary", flags.publish_binary]
    if flags.debug:
        args.append("-debug")
    moved = listener.fileno() != 3
    if moved:
        os.dup2(listener.fileno(), 3, inheritable=False)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3,),
            process_group=0,
        )
    finally:
        if moved:
            os.close(3)
    return proc.pid


def _raise_oom_score(pid: int) -> None:
    """containerd's oom_score_adj + 1, as the runc shim does; best effort
    (root here lacks CAP_SYS_RESOURCE, so it can be raised, never lowered)."""
    try:
        with open(f"/proc/{os.getppid()}/oom_score_adj", encoding="ascii") as f:
            score = min(int(f.read()) + 1, 1000)
        with open(f"/proc/{pid}/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(score))
    except (OSError, ValueError):
        pass
