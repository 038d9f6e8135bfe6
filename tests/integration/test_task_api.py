"""Task API parity with the runc shim, through ctr and a real containerd:
pause/resume, update, ps, exec, kill and delete, a plain foreground run;
each across a reboot where a reboot could break it."""

from __future__ import annotations

import json
import subprocess

import pytest
from google.protobuf import empty_pb2
from google.protobuf.any_pb2 import Any as AnyPb

from rebootshim.api.task import shim_pb2 as pb
from rebootshim.ttrpc.client import RemoteError

from .harness import SHIM_RUNTIME, Containerd, wait_until
from .helpers import (
    Events,
    Pty,
    cgroup_dir,
    exec_in,
    mounts_under,
    ps_rows,
    reboot_from_exec,
    run_detached,
    shim_call,
    task_pid,
    wait_new_pid,
)

FAILED_PRECONDITION = 9
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
# ctr's default spec has no cgroup mount; runc (cgroup v1) binds the
# container's own cgroups under it.
CGROUP_MOUNT = ("--mount", "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro")
MEMORY_LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"


def freezer_state(pid: int) -> str:
    with open(f"{cgroup_dir(pid, 'freezer')}/freezer.state", encoding="ascii") as f:
        return f.read().strip()


def end_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` (ours, by its Popen) if it still runs; close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_pause_and_resume_freeze_the_container_before_and_after_a_reboot(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    try:
        run_detached(containerd, container_id, "sleep", "600")
        pid = task_pid(containerd, container_id)
        assert pid
        for boot in (1, 2):
            containerd.ctr("tasks", "pause", container_id)
            assert containerd.task_status(container_id) == "PAUSED"
            assert freezer_state(pid) == "FROZEN"
            containerd.ctr("tasks", "resume", container_id)
            assert containerd.task_status(container_id) == "RUNNING"
            assert freezer_state(pid) == "THAWED"
            assert exec_in(containerd, container_id, "echo", "on").stdout == "on\n"
            assert task_pid(containerd, container_id) == pid

            def paused_and_resumed(count: int = boot) -> bool:
                topics = events.topics(container_id)
                return (
                    topics.count("/tasks/paused"),
                    topics.count("/tasks/resumed"),
                ) == (count, count)

            assert wait_until(paused_and_resumed, 10), events.topics(container_id)
            if boot == 1:
                reboot_from_exec(containerd, container_id)
                pid = wait_new_pid(containerd, container_id, pid)
        exited = [data.get("id") for topic, data in events.for_container(container_id)
                  if topic == "/tasks/exit"]  # fmt: skip
        assert container_id not in exited, "the init's exit leaked out"
    finally:
        events.stop()


def update_memory_limit(containerd: Containerd, container_id: str, limit: int) -> None:
    """Update, as containerd's Tasks.Update forwards it (ctr 1.6 has no
    `tasks update` command): LinuxResources as JSON in an Any."""
    resources = json.dumps({"memory": {"limit": limit}}).encode()
    request = pb.UpdateTaskRequest(
        id=container_id, resources=AnyPb(type_url=RESOURCES_URL, value=resources)
    )
    shim_call(containerd, container_id, "Update", request, empty_pb2.Empty)


def test_a_memory_limit_set_by_update_holds_in_the_next_boot(
    containerd: Containerd, container_id: str
) -> None:
    limit = 48 << 20
    run_detached(containerd, container_id, "sleep", "600", options=CGROUP_MOUNT)
    pid = task_pid(containerd, container_id)
    assert pid
    before = exec_in(containerd, container_id, "cat", MEMORY_LIMIT).stdout
    assert int(before) > limit  # unlimited: a page-rounded maximum

    update_memory_limit(containerd, container_id, limit)
    assert exec_in(containerd, container_id, "cat", MEMORY_LIMIT).stdout == f"{limit}\n"

    reboot_from_exec(containerd, container_id)
    new = wait_new_pid(containerd, container_id, pid)
    assert exec_in(containerd, container_id, "cat", MEMORY_LIMIT).stdout == f"{limit}\n"
    with open(f"{cgroup_dir(new, 'memory')}/memory.limit_in_bytes") as f:
        assert f.read() == f"{limit}\n"


def test_tasks_ps_lists_init_and_exec_then_only_the_new_init_after_a_reboot(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    sleeper: subprocess.Popen[str] | None = None
    try:
        run_detached(containerd, container_id, "sleep", "600")
        sleeper = containerd.popen_ctr(
            "tasks", "exec", "--exec-id", "sleeper", container_id, "sleep", "600"
        )
        pid = task_pid(containerd, container_id)
        assert pid

        def exec_pid() -> int | None:
            for topic, data in events.for_container(container_id):
                if topic == "/tasks/exec-started" and data.get("exec_id") == "sleeper":
                    return int(str(data["pid"]))
            return None

        assert wait_until(lambda: exec_pid() is not None, 10)
        rows = ps_rows(containerd, container_id)
        assert set(rows) == {pid, exec_pid()}
        assert rows[pid] == "-"
        assert "ExecID:sleeper" in rows[exec_pid() or 0]

        reboot_from_exec(containerd, container_id)
        new = wait_new_pid(containerd, container_id, pid)
        assert sleeper.wait(20) == 137  # it died with the PID namespace
        assert ps_rows(containerd, container_id) == {new: "-"}
    finally:
        if sleeper is not None:
            end_process(sleeper)
        events.stop()


def test_exec_relays_its_output_and_returns_its_exit_code(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    done = exec_in(
        containerd, container_id, "sh", "-c", "echo out; echo err >&2; exit 7",
        check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")


def test_exec_with_a_tty_gets_a_pty_of_the_client_size_after_a_reboot(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    pid = task_pid(containerd, container_id)
    assert pid
    reboot_from_exec(containerd, container_id)
    wait_new_pid(containerd, container_id, pid)

    # ctr sizes the exec's pty right after Start: wait for it (bounded).
    script = (
        'i=0; until [ "$(stty size 2>/dev/null)" = "20 70" ] || [ $i -ge 100 ]; '
        "do i=$((i+1)); sleep 0.05; done; "
        'echo "tty $(tty) size $(stty size)"; exit 3'
    )
    pty = Pty(rows=20, cols=70)
    run = subprocess.Popen(
        containerd.ctr_argv(
            ("tasks", "exec", "--tty", "--exec-id", "tty", container_id,
             "sh", "-c", script)
        ),
        stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
        start_new_session=True,
    )  # fmt: skip
    pty.close_slave()
    try:
        assert pty.read_until(lambda t: "size" in t and t.endswith("\n"), 20), pty.text
        assert run.wait(20) == 3
        assert pty.text.startswith("tty /dev/pts/"), pty.text
        assert pty.text.endswith(" size 20 70\n"), pty.text
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        pty.close()


def test_exec_of_a_missing_binary_fails_clearly_and_the_container_keeps_running(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    pid = task_pid(containerd, container_id)
    try:
        done = containerd.ctr(
            "tasks", "exec", "--exec-id", "missing", container_id, "/no/such/binary",
            check=False, timeout=10,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(
            "ctr tasks exec of a missing binary did not return in 10 s\n"
            + containerd.log_tail(15)
        )
    assert done.returncode != 0
    assert "/no/such/binary" in done.stderr
    assert "no such file or directory" in done.stderr
    assert containerd.task_status(container_id) == "RUNNING"
    assert task_pid(containerd, container_id) == pid
    assert exec_in(containerd, container_id, "echo", "alive").stdout == "alive\n"


def test_sigterm_leaves_an_init_without_handler_and_sigkill_ends_it_with_137(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    pid = task_pid(containerd, container_id)
    containerd.ctr("tasks", "kill", container_id)  # SIGTERM by default
    # PID 1 without a handler ignores SIGTERM from outside its namespace.
    assert not wait_until(lambda: containerd.task_status(container_id) != "RUNNING", 1)
    assert task_pid(containerd, container_id) == pid

    containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    assert wait_until(lambda: containerd.task_status(container_id) == "STOPPED", 10)

    again = containerd.ctr(
        "tasks", "kill", "--signal", "SIGKILL", container_id, check=False
    )
    assert again.returncode != 0
    assert "already finished" in again.stderr and "not found" in again.stderr

    deleted = containerd.ctr("tasks", "delete", container_id)
    assert "exit code 137" in deleted.stderr
    assert containerd.task_status(container_id) is None


def test_kill_all_ends_the_init_and_every_exec(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    sleeper = containerd.popen_ctr(
        "tasks", "exec", "--exec-id", "sleeper", container_id, "sleep", "600"
    )
    try:
        assert wait_until(lambda: len(ps_rows(containerd, container_id)) == 2, 10)
        containerd.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", container_id)
        assert sleeper.wait(20) == 137
        assert wait_until(lambda: containerd.task_status(container_id) == "STOPPED", 10)
        deleted = containerd.ctr("tasks", "delete", container_id)
        assert "exit code 137" in deleted.stderr
    finally:
        end_process(sleeper)


def test_deleting_a_running_task_is_refused_by_ctr_and_by_the_shim(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    refused = containerd.ctr("tasks", "delete", container_id, check=False)
    assert refused.returncode != 0
    assert "must be stopped" in refused.stderr

    # ctr checks the status itself; the shim must refuse on its own too.
    with pytest.raises(RemoteError) as raised:
        shim_call(
            containerd, container_id, "Delete", pb.DeleteRequest(id=container_id),
            pb.DeleteResponse,
        )  # fmt: skip
    assert raised.value.code == FAILED_PRECONDITION
    assert containerd.task_status(container_id) == "RUNNING"
    assert exec_in(containerd, container_id, "echo", "alive").stdout == "alive\n"


def test_foreground_run_relays_output_and_exit_code_and_rm_leaves_nothing(
    containerd: Containerd, container_id: str
) -> None:
    mounts_before = set(mounts_under(str(containerd.tmp)))
    run = containerd.popen_ctr(
        "run", "--rm", "--runtime", SHIM_RUNTIME, containerd.image, container_id,
        "sh", "-c", "echo out; echo err >&2; exit 3",
    )  # fmt: skip
    try:
        stdout, stderr = run.communicate(timeout=30)
    finally:
        end_process(run)
    assert (run.returncode, stdout, stderr) == (3, "out\n", "err\n")
    assert containerd.task_status(container_id) is None
    assert container_id not in containerd.ctr("containers", "ls", "-q").stdout.split()
    left = set(mounts_under(str(containerd.tmp))) - mounts_before
    assert not left, left
