"""containerd-shim-reboot-v2: the ``start`` and ``delete`` subcommands and
the daemon (protocol doc section 1).

``start`` must be quick and print nothing but the address, so this module
imports only what ``start`` needs; the daemon's machinery is imported
when the daemon runs.
"""

from __future__ import annotations

import os
import sys

from rebootshim import launch

TYPE_CHECKING = False  # typing and collections.abc cost `start` 2 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

VERSION = "0.1.0"
RUNTIME = "io.containerd.reboot.v2"
SOCKET_DIR = "/run/containerd/s"
_VALUE_FLAGS = ("namespace", "address", "publish-binary", "id", "bundle", "socket")
_BOOL_FLAGS = ("debug", "v", "version")


class UsageError(Exception):
    pass


class Flags:
    """The command line (a plain class: dataclasses costs ``start`` 15 ms)."""

    __slots__ = ("action", "address", "bundle", "debug", "id", "namespace",
                 "publish_binary", "socket", "version")  # fmt: skip

    def __init__(self) -> None:
        self.namespace = self.address = self.publish_binary = ""
        self.id = self.bundle = self.socket = self.action = ""
        self.debug = self.version = False


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
    return os.path.join(SOCKET_DIR, launch.sha256(key).hexdigest())


def runc_root(bundle: str, namespace: str) -> str:
    """runc's state dir, under this containerd's own state dir.

    The bundle is <state>/io.containerd.runtime.v2.task/<ns>/<id>; keeping
    runc state beside it keeps two containerds on one machine apart.
    """
    state = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(bundle))))
    return os.path.join(state, RUNTIME, "runc", namespace)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        flags = parse_args(args)
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
        try:
            return start(flags)
        except launch.ZygoteError as exc:
            print(f"containerd-shim-reboot-v2: {exc}", file=sys.stderr)
            return 1
    if flags.action == "delete" and launch.delegate_delete(
        SOCKET_DIR, flags.address, args
    ):
        return 0
    _enable_site()
    if flags.action == "delete":
        from rebootshim.cleanup import delete

        return delete(flags)
    from rebootshim.daemon import run

    return run(flags)


def _enable_site() -> None:
    """The launcher runs with -S for a quick ``start``; the daemon and
    ``delete`` need the installed packages (protobuf) after all."""
    if not sys.flags.no_site:
        return
    import site

    site.main()


def start(flags: Flags) -> int:
    """Listen, write ``address``, spawn the daemon, print the address."""
    _drain_stdin()
    path = flags.socket or socket_path(flags)
    listener = launch.listen(path)
    address = f"unix://{path}"
    try:
        _write_atomic(os.path.join(os.getcwd(), "address"), address)
        daemon = launch.launch_daemon(
            SOCKET_DIR, flags.address, _daemon_args(flags), listener
        )
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


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _daemon_args(flags: Flags) -> list[str]:
    args = [
        "-namespace",
        flags.namespace,
        "-id",
        flags.id,
        "-address",
        flags.address,
    ]
    if flags.publish_binary:
        args += ["-publish-binary", flags.publish_binary]
    if flags.socket:
        args += ["-socket", flags.socket]
    if flags.debug:
        args.append("-debug")
    return args


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
