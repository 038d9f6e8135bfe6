"""The harness itself, proven with containerd's own runc shim."""

from __future__ import annotations

from .harness import RUNC_RUNTIME, Containerd, wait_until


def run_detached(containerd: Containerd, container_id: str, *argv: str) -> None:
    containerd.ctr(
        "run", "--detach", "--runtime", RUNC_RUNTIME, containerd.image, container_id,
        *argv,
    )  # fmt: skip


def test_image_is_imported(containerd: Containerd) -> None:
    images = containerd.ctr("images", "ls", "--quiet").stdout.split()
    assert containerd.image in images


def test_detached_container_runs_execs_and_is_deleted(
    containerd: Containerd, container_id: str
) -> None:
    run_detached(containerd, container_id, "sleep", "600")
    assert containerd.task_status(container_id) == "RUNNING"

    exec_ = containerd.ctr(
        "tasks", "exec", "--exec-id", "hi", container_id, "echo", "hi"
    )
    assert exec_.stdout == "hi\n"

    containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    assert wait_until(lambda: containerd.task_status(container_id) == "STOPPED", 10)
    containerd.ctr("tasks", "delete", container_id)
    containerd.ctr("containers", "delete", container_id)
    assert container_id not in containerd.ctr("containers", "ls", "-q").stdout.split()


def test_foreground_run_relays_output_and_exit_status(
    containerd: Containerd, container_id: str
) -> None:
    script = "echo out; echo err >&2; exit 3"
    proc = containerd.popen_ctr(
        "run", "--rm", "--runtime", RUNC_RUNTIME, containerd.image, container_id,
        "sh", "-c", script,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stdout, stderr) == (3, "out\n", "err\n")


def test_cleanup_container_removes_a_running_container(
    containerd: Containerd,
) -> None:
    container_id = containerd.unique_id("cleanup")
    run_detached(containerd, container_id, "sleep", "600")
    containerd.cleanup_container(container_id)
    assert containerd.task_status(container_id) is None
    assert container_id not in containerd.ctr("containers", "ls", "-q").stdout.split()
