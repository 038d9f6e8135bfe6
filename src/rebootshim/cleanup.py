"""The ``delete`` subcommand: clean up after a shim that is gone.

containerd runs it after every disconnect, the normal one after Shutdown
included (protocol doc 1.6), so it must be idempotent and quick, print a
DeleteResponse and exit 0 whatever it finds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rebootshim.cli import Flags, runc_root, socket_path
from rebootshim.runtime import mount
from rebootshim.runtime.runc import find_runc

KILLED = 128 + 9


def delete(flags: Flags) -> int:
    from rebootshim.api.task import shim_pb2

    bundle = flags.bundle or os.getcwd()
    warnings = _force_delete(flags, bundle)
    for problem in _release_mounts(bundle):
        warnings.append(problem)
    _remove_dead_socket(flags.socket or socket_path(flags))
    resp = shim_pb2.DeleteResponse(pid=_read_pid(bundle), exit_status=KILLED)
    resp.exited_at.FromNanoseconds(time.time_ns())
    sys.stdout.buffer.write(resp.SerializeToString())
    sys.stdout.flush()
    for problem in warnings:
        print(problem, file=sys.stderr)
    return 0


def _force_delete(flags: Flags, bundle: str) -> list[str]:
    """runc delete --force: kills what is left and removes runc's state."""
    try:
        runc = find_runc()
    except Exception as exc:
        return [str(exc)]
    argv = [
        runc,
        "--root",
        runc_root(bundle, flags.namespace),
        "delete",
        "--force",
        flags.id,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    err = done.stderr.strip()
    if done.returncode != 0 and "does not exist" not in err and "not found" not in err:
        return [f"runc delete failed: {err}"]
    return []


def _release_mounts(bundle: str) -> list[str]:
    problems = []
    for what, undo in (
        (os.path.join(bundle, "netns"), mount.unpin_namespace),
        (os.path.join(bundle, "rootfs"), mount.unmount_all),
    ):
        try:
            undo(what)
        except OSError as exc:
            problems.append(f"failed to unmount {what}: {exc}")
    return problems


def _remove_dead_socket(path: str) -> None:
    import socket

    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError:
        os.unlink(path)
    finally:
        probe.close()


def _read_pid(bundle: str) -> int:
    try:
        with open(os.path.join(bundle, "init.pid"), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0
