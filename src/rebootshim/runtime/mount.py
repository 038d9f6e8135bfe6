"""mount(2) and umount2(2) for the rootfs and the pinned network namespace.

The shim owns the rootfs mounts (it mounts them at Create and unmounts
them at Delete, protocol doc 3.3) and, across reboots, a bind mount of
the first boot's network namespace so that the next boot can join it.
Option parsing follows fstab words the way containerd's mount package
does: known flags become mount flags, the rest is filesystem data.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# word -> (clear these flags?, flags)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
_PROPAGATION = {
    "rprivate": MS_PRIVATE | MS_REC,
    "private": MS_PRIVATE,
    "rslave": MS_SLAVE | MS_REC,
    "slave": MS_SLAVE,
    "rshared": MS_SHARED | MS_REC,
    "shared": MS_SHARED,
}

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...] = ()


def parse_options(options: Iterable[str]) -> tuple[int, int, str]:
    """fstab words -> (flags, propagation flags, data string)."""
    flags, propagation, data = 0, 0, []
    for word in options:
        if word in _FLAGS:
            clear, bits = _FLAGS[word]
            flags = flags & ~bits if clear else flags | bits
        elif word in _PROPAGATION:
            propagation |= _PROPAGATION[word]
        else:
            data.append(word)
    return flags, propagation, ",".join(data)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"failed to {what}: {os.strerror(err)}")


def sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() or None,
        flags,
        data.encode() or None,
    )
    _check(rc, f"mount {source} on {target}")


def mount(m: Mount, target: str) -> None:
    """Mount one containerd Mount on ``target`` (mount(8) semantics)."""
    flags, propagation, data = parse_options(m.options)
    bind_ro = flags & MS_BIND and flags & MS_RDONLY
    sys_mount(m.source, target, m.type, flags & ~MS_RDONLY if bind_ro else flags, data)
    if propagation:
        sys_mount("", target, "", propagation, "")
    if bind_ro:
        # A bind mount ignores MS_RDONLY until remounted (mount(2)).
        sys_mount("", target, "", flags | MS_REMOUNT, "")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount in order; on failure unmount what was mounted, then raise."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str) -> None:
    rc = _libc.umount2(target.encode(), 0)
    if rc != 0 and ctypes.get_errno() == errno.EBUSY:
        rc = _libc.umount2(target.encode(), MNT_DETACH)
    _check(rc, f"unmount {target}")


def unmount_all(target: str) -> None:
    """Unmount every mount stacked on ``target``; a no-op if none."""
    while is_mountpoint(target):
        unmount(target)


def is_mountpoint(path: str) -> bool:
    """Whether ``path`` is a mount point, from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                point = line.split(" ", 5)[4]
                if _unescape(point) == real:
                    return True
    except OSError:
        return False
    return False


def _unescape(field: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n")):
        field = field.replace(code, char)
    return field.replace("\\134", "\\")


def pin_namespace(pid: int, kind: str, path: str) -> None:
    """Keep ``pid``'s namespace alive by bind-mounting it onto ``path``."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o400)
    os.close(fd)
    try:
        sys_mount(f"/proc/{pid}/ns/{kind}", path, "", MS_BIND, "")
    except OSError:
        os.unlink(path)
        raise


def unpin_namespace(path: str) -> None:
    """Drop a pin made by pin_namespace; a no-op if there is none."""
    if not os.path.exists(path):
        return
    unmount_all(path)
    os.unlink(path)
