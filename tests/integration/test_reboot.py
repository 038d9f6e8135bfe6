"""Transparent reboot, end to end: containerd sees one container that
never stopped, and the container keeps its layer, netns and stdio."""

from __future__ import annotations

import subprocess

from .harness import SHIM_RUNTIME, Containerd, wait_until
from .helpers import (
    POLICY,
    Events,
    LineReader,
    exec_in,
    reboot_from_exec,
    run_detached,
    task_pid,
    wait_new_pid,
)

# The init counts its boots in the writable layer, prints five numbered
# lines per boot and reboots itself until boot 4, which stays up.
BOOTING_INIT = (
    "b=$(( $(cat /bootcount 2>/dev/null || echo 0) + 1 )); echo $b > /bootcount; "
    'for i in 1 2 3 4 5; do echo "boot $b line $i"; sleep 0.05; done; '
    "if [ $b -le 3 ]; then reboot -f; fi; exec sleep 600"
)
EXPECTED = [f"boot {b} line {i}" for b in range(1, 5) for i in range(1, 6)]


def test_foreground_run_keeps_its_output_across_reboots_in_order(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    run = containerd.popen_ctr(
        "run", "--runtime", SHIM_RUNTIME, containerd.image, container_id,
        "sh", "-c", BOOTING_INIT,
    )  # fmt: skip
    out = LineReader(run.stdout)
    try:
        assert out.wait_for(lambda lines: len(lines) >= len(EXPECTED), 60), out.lines
        assert out.lines == EXPECTED
        assert run.poll() is None, "ctr run returned during the reboots"
        assert containerd.task_status(container_id) == "RUNNING"
        topics = events.topics(container_id)
        assert "/tasks/exit" not in topics
        assert topics.count("/tasks/start") == 4  # first start + 3 reboots

        containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        assert run.wait(30) == 137
        assert wait_until(lambda: "/tasks/exit" in events.topics(container_id), 10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        events.stop()


def test_reboot_keeps_the_writable_layer_and_reports_the_new_pid(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    first = task_pid(containerd, container_id)
    assert first
    exec_in(containerd, container_id, "sh", "-c", "echo kept > /marker")

    reboot_from_exec(containerd, container_id)
    second = wait_new_pid(containerd, container_id, first)

    assert exec_in(containerd, container_id, "cat", "/marker").stdout == "kept\n"
    ps = containerd.ctr("tasks", "ps", container_id).stdout
    assert str(second) in ps
    assert (
        containerd.ctr("containers", "ls", "-q").stdout.split().count(container_id) == 1
    )


def test_reboot_keeps_the_network_namespace(
    containerd: Containerd, container_id: str
) -> None:
    # This kernel has no dummy driver, so a veth pair stands in for it:
    # both ends live in the container's network namespace.
    run_detached(containerd, container_id, "sleep", "600")
    pid = task_pid(containerd, container_id)
    assert pid
    subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "link", "add", "rs0", "type", "veth",
         "peer", "name", "rs1"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "addr", "add", "10.211.0.1/24",
         "dev", "rs0"],
        check=True,
    )  # fmt: skip

    reboot_from_exec(containerd, container_id)
    wait_new_pid(containerd, container_id, pid)

    links = exec_in(containerd, container_id, "ip", "addr", "show", "rs0").stdout
    assert "rs0" in links and "10.211.0.1/24" in links


def test_execs_alive_at_a_reboot_exit_and_exec_works_after(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    try:
        run_detached(containerd, container_id, "sleep", "600")
        pid = task_pid(containerd, container_id)
        assert pid
        sleeper = containerd.popen_ctr(
            "tasks", "exec", "--exec-id", "sleeper", container_id, "sleep", "600"
        )
        assert wait_until(
            lambda: "/tasks/exec-started" in events.topics(container_id), 10
        )

        reboot_from_exec(containerd, container_id)
        wait_new_pid(containerd, container_id, pid)

        # The exec died with the PID namespace: its Wait returned.
        assert sleeper.wait(20) == 137
        exited = [d.get("id") for t, d in events.for_container(container_id)
                  if t == "/tasks/exit"]  # fmt: skip
        assert "sleeper" in exited
        assert container_id not in exited

        after = exec_in(containerd, container_id, "echo", "after")
        assert after.stdout == "after\n"
    finally:
        events.stop()


def test_a_reboot_issued_by_the_init_itself_is_transparent(
    containerd: Containerd, container_id: str
) -> None:
    script = (
        "while true; do if [ -f /go ]; then rm /go; reboot -f; fi; sleep 0.05; done"
    )
    run_detached(containerd, container_id, "sh", "-c", script)
    pid = task_pid(containerd, container_id)
    assert pid
    exec_in(containerd, container_id, "touch", "/go")
    new = wait_new_pid(containerd, container_id, pid)
    assert new != pid
    assert containerd.task_status(container_id) == "RUNNING"


def test_reboot_storm_past_the_bound_exits_with_129(
    containerd: Containerd, container_id: str
) -> None:
    run = containerd.popen_ctr(
        "run", "--runtime", SHIM_RUNTIME, "--annotation", f"{POLICY}=restart:3/60s",
        containerd.image, container_id, "sh", "-c", "echo up; sleep 0.1; reboot -f",
    )  # fmt: skip
    out = LineReader(run.stdout)
    try:
        # Three reboots are hidden; the fourth within the window ends it.
        assert run.wait(60) == 129
        assert out.wait_for(lambda lines: len(lines) >= 4, 5)
        assert out.lines == ["up"] * 4
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_poweroff_inside_ends_the_container_with_130(
    containerd: Containerd, container_id: str
) -> None:
    run = containerd.popen_ctr(
        "run", "--runtime", SHIM_RUNTIME, containerd.image, container_id,
        "sh", "-c", "echo bye; poweroff -f",
    )  # fmt: skip
    stdout, _ = run.communicate(timeout=60)
    assert (run.returncode, stdout) == (130, "bye\n")


def test_a_reboot_works_under_containerds_default_seccomp_profile(
    containerd: Containerd, container_id: str
) -> None:
    # ctr's profile allows reboot(2) only with CAP_SYS_BOOT, judged before
    # the shim granted it; the shim allows it along with the capability.
    run_detached(containerd, container_id, "sleep", "600", options=("--seccomp",))
    pid = task_pid(containerd, container_id)
    assert pid
    reboot_from_exec(containerd, container_id)
    assert wait_new_pid(containerd, container_id, pid) != pid
