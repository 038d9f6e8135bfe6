"""OOM events from the container's memory cgroup, before and after a reboot
(each boot has a new cgroup, watched anew).  The kernel may report
one kill as more than one OOM event, so counts only ever grow here."""

from __future__ import annotations

import time

from .harness import Containerd, wait_until
from .helpers import (
    Events,
    exec_in,
    reboot_from_exec,
    run_detached,
    task_pid,
    wait_new_pid,
)

LIMIT = str(16 << 20)
# A shell variable of 64 MB in a 16 MiB cgroup: the OOM killer ends it.
# The hog (and its pipeline) volunteer first, or a second OOM while the
# first victim's memory is being freed may pick the container's init.
HOG = (
    "echo 1000 > /proc/self/oom_score_adj; "
    "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"
)


def test_an_oom_kill_is_published_before_and_after_a_reboot(
    containerd: Containerd, container_id: str
) -> None:
    events = Events(containerd)
    try:
        run_detached(
            containerd, container_id, "sleep", "600", options=("--memory-limit", LIMIT)
        )
        pid = task_pid(containerd, container_id)
        assert pid

        def ooms() -> int:
            return events.topics(container_id).count("/tasks/oom")

        hog = exec_in(containerd, container_id, "sh", "-c", HOG, check=False)
        assert hog.returncode == 137 and "survived" not in hog.stdout
        assert wait_until(lambda: ooms() >= 1, 10)
        time.sleep(0.5)  # late events of the same kill land before the count
        before = ooms()

        reboot_from_exec(containerd, container_id)
        wait_new_pid(containerd, container_id, pid)
        hog = exec_in(containerd, container_id, "sh", "-c", HOG, check=False)
        assert hog.returncode == 137 and "survived" not in hog.stdout
        assert wait_until(lambda: ooms() > before, 10), containerd.log_tail(30)
        tasks = containerd.ctr("tasks", "ls").stdout
        assert containerd.task_status(container_id) == "RUNNING", (
            tasks + containerd.log_tail(40)
        )
    finally:
        events.stop()
