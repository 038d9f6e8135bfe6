"""What a reboot may never do, and what the shim leaves behind: refusals,
capabilities, seccomp, a kill racing a restart, a shim killed outright."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RUNC_RUNTIME, SHIM_RUNTIME, Containerd, wait_until
from .helpers import (
    POLICY,
    Events,
    bundle_dir,
    exec_in,
    mounts_under,
    reboot_from_exec,
    run_detached,
    runc_state_dir,
    shim_pid,
    task_pid,
    wait_new_pid,
)

CAP_SYS_BOOT_BIT = 22
# kexec_load/kexec_file_load with invalid flags: EINVAL from the kernel if
# the call gets through, EPERM if seccomp stops it first.  Never a load.
KEXEC_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    long a = syscall(SYS_kexec_load, 0, 0, 0, 0xdeadbeefUL);
    int ea = errno;
    long b = syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0xdeadbeefUL);
    int eb = errno;
    printf("%s %s\n", a == -1 && ea == EPERM ? "EPERM" : "OTHER",
           b == -1 && eb == EPERM ? "EPERM" : "OTHER");
    return 0;
}
"""


def cap_bits(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in {status!r}")


def ctr_run_fails(containerd: Containerd, container_id: str, *options: str) -> str:
    done = containerd.ctr(
        "run", "--detach", "--runtime", SHIM_RUNTIME, *options, containerd.image,
        container_id, "sleep", "600", check=False,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert containerd.task_status(container_id) is None
    return done.stderr


@pytest.fixture
def other_pid_ns(containerd: Containerd) -> Iterator[str]:
    """The PID namespace of another container (runc shim), to share.

    Joining the host's PID namespace fails in runc on this VM for the runc
    shim too, and a shared one is the same case for the shim: the
    container does not own the PID namespace it runs in.
    """
    owner = containerd.unique_id("pid-owner")
    containerd.ctr(
        "run", "--detach", "--runtime", RUNC_RUNTIME, containerd.image, owner,
        "sleep", "600",
    )  # fmt: skip
    try:
        pid = task_pid(containerd, owner)
        yield f"pid:/proc/{pid}/ns/pid"
    finally:
        containerd.cleanup_container(owner)


def test_explicit_restart_with_a_shared_pid_namespace_fails_create(
    containerd: Containerd, container_id: str, other_pid_ns: str
) -> None:
    err = ctr_run_fails(
        containerd, container_id, "--with-ns", other_pid_ns,
        "--annotation", f"{POLICY}=restart",
    )  # fmt: skip
    assert "own PID namespace" in err
    assert "invalid argument" in err
    assert mounts_under(bundle_dir(containerd, container_id)) == []


def test_explicit_restart_with_the_host_pid_namespace_fails_create(
    containerd: Containerd, container_id: str
) -> None:
    # Refused in Create, before runc: nothing ever runs in the host's PID
    # namespace here (runc on this VM could not join it anyway).
    err = ctr_run_fails(
        containerd, container_id, "--with-ns", "pid:/proc/1/ns/pid",
        "--annotation", f"{POLICY}=restart",
    )  # fmt: skip
    assert "own PID namespace" in err and "invalid argument" in err
    assert mounts_under(bundle_dir(containerd, container_id)) == []


def test_a_bad_annotation_fails_create_naming_it_and_the_allowed_values(
    containerd: Containerd, container_id: str
) -> None:
    err = ctr_run_fails(containerd, container_id, "--annotation", f"{POLICY}=sometimes")
    assert POLICY in err and "allowed values are exit | restart" in err
    assert "invalid argument" in err
    assert mounts_under(bundle_dir(containerd, container_id)) == []


def test_a_shared_pid_namespace_without_annotation_never_gets_sys_boot(
    containerd: Containerd, container_id: str, other_pid_ns: str
) -> None:
    # Only capabilities are read here: nothing in this container reboots.
    run_detached(
        containerd, container_id, "sleep", "600",
        options=("--with-ns", other_pid_ns, "--cap-add", "CAP_SYS_BOOT"),
    )  # fmt: skip
    status = exec_in(containerd, container_id, "cat", "/proc/self/status").stdout
    assert not cap_bits(status, "CapBnd") & (1 << CAP_SYS_BOOT_BIT)
    assert not cap_bits(status, "CapEff") & (1 << CAP_SYS_BOOT_BIT)


def test_the_shim_grants_sys_boot_to_init_and_execs_with_its_own_pid_ns(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    status = exec_in(containerd, container_id, "cat", "/proc/self/status").stdout
    assert cap_bits(status, "CapEff") & (1 << CAP_SYS_BOOT_BIT)
    init = exec_in(containerd, container_id, "cat", "/proc/1/status").stdout
    assert cap_bits(init, "CapBnd") & (1 << CAP_SYS_BOOT_BIT)


@pytest.fixture(scope="module")
def kexec_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kexec")
    source = folder / "probe.c"
    source.write_text(KEXEC_PROBE)
    subprocess.run(
        ["cc", "-static", "-O", "-o", str(folder / "probe"), str(source)], check=True
    )
    return folder


@pytest.mark.parametrize("profile", [(), ("--seccomp",)], ids=["none", "default"])
def test_kexec_load_and_kexec_file_load_are_denied(
    containerd: Containerd,
    container_id: str,
    kexec_probe: Path,
    profile: tuple[str, ...],
) -> None:
    mount = f"type=bind,src={kexec_probe},dst=/probe,options=rbind:ro"
    options = ("--mount", mount, *profile)
    run_detached(containerd, container_id, "sleep", "600", options=options)
    out = exec_in(containerd, container_id, "/probe/probe").stdout
    assert out == "EPERM EPERM\n"


def test_a_killed_shim_then_tasks_rm_leaves_nothing_behind(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    try:
        run_detached(containerd, container_id, "sleep", "600")
        first = task_pid(containerd, container_id)
        assert first
        reboot_from_exec(containerd, container_id)  # pins the netns
        init = wait_new_pid(containerd, container_id, first)
        bundle = bundle_dir(containerd, container_id)
        assert len(mounts_under(bundle)) == 2  # rootfs and the pinned netns

        os.kill(shim_pid(containerd, container_id), signal.SIGKILL)

        # containerd sees the connection drop, runs `shim delete`, then
        # publishes the exit from its reply and forgets the task (1.6).
        def exits() -> list[dict[str, object]]:
            return [
                d for t, d in events.for_container(container_id)
                if t == "/tasks/exit" and d.get("id") == container_id
            ]  # fmt: skip

        assert wait_until(lambda: bool(exits()), 20)
        rm = containerd.ctr("tasks", "rm", container_id, check=False)
        assert rm.returncode == 0 or "not found" in rm.stderr

        assert [(d.get("pid"), d.get("exit_status")) for d in exits()] == [(init, 137)]
        assert mounts_under(bundle) == []
        assert not os.path.exists(runc_state_dir(containerd, container_id))
        assert wait_until(lambda: not os.path.exists(f"/proc/{init}"), 10)
        memory = f"/sys/fs/cgroup/memory/{containerd.namespace}/{container_id}"
        assert not os.path.exists(memory)
    finally:
        events.stop()


@pytest.fixture
def slow_restart_spec(tmp_path: Path, containerd: Containerd) -> Iterator[Path]:
    """A spec (for `ctr run --config`) whose createRuntime hook sleeps while
    ``slow`` exists, so a reboot stays in REBOOTING long enough to race."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for folder in ("proc", "sys", "dev", "tmp"):
        (rootfs / folder).mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "reboot", "cat", "true"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    spec = json.loads(subprocess.run(
        ["ctr", "oci", "spec"], check=True, capture_output=True, text=True
    ).stdout)  # fmt: skip
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["process"]["args"] = ["sleep", "600"]
    spec["process"]["env"] = ["PATH=/bin"]
    flag = tmp_path / "slow"
    hook = f"if [ -e {flag} ]; then sleep 2; fi"
    spec["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(spec))
    yield path


def test_a_kill_during_a_restart_wins_and_nothing_is_resurrected(
    containerd: Containerd, container_id: str, slow_restart_spec: Path
) -> None:
    events = Events(containerd)
    try:
        containerd.ctr(
            "run", "--detach", "--runtime", SHIM_RUNTIME,
            "--config", str(slow_restart_spec), container_id,
        )  # fmt: skip
        (slow_restart_spec.parent / "slow").touch()
        reboot_from_exec(containerd, container_id)
        time.sleep(0.5)  # inside the 2 s createRuntime hook of the new boot
        assert containerd.task_status(container_id) == "RUNNING"  # never STOPPED

        containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        assert wait_until(lambda: containerd.task_status(container_id) == "STOPPED", 10)
        time.sleep(2.5)  # past the hook: nothing may come back
        assert containerd.task_status(container_id) == "STOPPED"
        topics = events.topics(container_id)
        assert topics.count("/tasks/start") == 1
        exits = [d for t, d in events.for_container(container_id) if t == "/tasks/exit"]
        assert [d.get("exit_status") for d in exits if d.get("id") == container_id] == [
            137
        ]
        containerd.ctr("tasks", "delete", container_id)
        assert not os.path.exists(runc_state_dir(containerd, container_id))
    finally:
        events.stop()


def test_execs_and_reboots_leak_no_shim_fd_thread_or_mount(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    exec_in(containerd, container_id, "true")  # first exec: lazy set-ups done
    shim = shim_pid(containerd, container_id)
    bundle = bundle_dir(containerd, container_id)

    def snapshot() -> tuple[int, int, int]:
        return (
            len(os.listdir(f"/proc/{shim}/fd")),
            len(os.listdir(f"/proc/{shim}/task")),
            len(mounts_under(bundle)),
        )

    reboot_from_exec(containerd, container_id)
    wait_new_pid(containerd, container_id, 0)
    exec_in(containerd, container_id, "true")
    time.sleep(0.5)  # the exec's stdio closes just after its exit
    before = snapshot()
    for _ in range(3):
        for _ in range(3):
            exec_in(containerd, container_id, "true")
        pid = task_pid(containerd, container_id)
        assert pid
        reboot_from_exec(containerd, container_id)
        wait_new_pid(containerd, container_id, pid)
    exec_in(containerd, container_id, "true")
    assert wait_until(lambda: snapshot() == before, 5), (snapshot(), before)
