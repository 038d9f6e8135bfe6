"""Every stdio mode of ``ctr run`` through our shim, each across a reboot:
a terminal (with its size), ``file://`` and ``binary://`` log URIs, and a
foreground stdin that keeps feeding whichever boot is current."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from .harness import SHIM_RUNTIME, Containerd, wait_until
from .helpers import (
    LineReader,
    Pty,
    is_gone,
    reboot_from_exec,
    run_detached,
    task_pid,
    wait_new_pid,
)

# Counts boots in the writable layer (the image has no /var).
BOOT_COUNT = (
    "b=$(( $(cat /bootcount 2>/dev/null || echo 0) + 1 )); echo $b > /bootcount; "
)


def wait_for_size(size: str, tries: int) -> str:
    """Shell: poll `stty size` until it is ``size`` (tries x 50 ms)."""
    return (
        f'i=0; until [ "$(stty size 2>/dev/null)" = "{size}" ] || [ $i -ge {tries} ]; '
        "do i=$((i+1)); sleep 0.05; done; "
    )


# Boot 1 waits for the size ctr sends right after Start, reports it, waits
# for the resize the test makes, then reboots; boot 2 reports its size at
# once: only the shim can have set it on the new pty.
TERMINAL_INIT = (
    BOOT_COUNT + "if [ $b -eq 1 ]; then " + wait_for_size("30 100", 100) + "fi; "
    'echo "boot $b tty $(tty) size $(stty size)"; '
    "if [ $b -eq 1 ]; then "
    + wait_for_size("40 120", 200)
    + 'echo "boot 1 resized to $(stty size)"; reboot -f; fi; '
    "exec sleep 600"
)

# Three stdout lines and one stderr line per boot, then stays up.
LOGGING_INIT = (
    BOOT_COUNT + 'for i in 1 2 3; do echo "boot $b line $i"; done; '
    'echo "boot $b err" >&2; exec sleep 600'
)


def boot_lines(boot: int) -> list[str]:
    return [f"boot {boot} line {i}" for i in (1, 2, 3)]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def has_line(prefix: str) -> Callable[[str], bool]:
    """A predicate: ``text`` holds a whole line starting with ``prefix``."""
    return lambda text: re.search(f"^{re.escape(prefix)}.*\n", text, re.M) is not None


def end_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` (ours, by its Popen) if it still runs; close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            with contextlib.suppress(BrokenPipeError):
                pipe.close()


def test_terminal_run_keeps_its_tty_and_window_size_across_a_reboot(
    containerd: Containerd, container_id: str
) -> None:
    pty = Pty(rows=30, cols=100)
    run = subprocess.Popen(
        containerd.ctr_argv(
            ("run", "--tty", "--runtime", SHIM_RUNTIME, containerd.image,
             container_id, "sh", "-c", TERMINAL_INIT)
        ),
        stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
        start_new_session=True,
    )  # fmt: skip
    pty.close_slave()
    try:
        assert pty.read_until(has_line("boot 1 tty"), 20), pty.text
        pty.resize(rows=40, cols=120)
        run.send_signal(signal.SIGWINCH)  # ctr forwards its tty's new size
        assert pty.read_until(has_line("boot 2 tty"), 30), pty.text

        lines = [re.sub(r"/dev/pts/\d+", "/dev/pts/N", line)
                 for line in pty.text.splitlines() if line]  # fmt: skip
        assert lines == [
            "boot 1 tty /dev/pts/N size 30 100",
            "boot 1 resized to 40 120",
            "boot 2 tty /dev/pts/N size 40 120",
        ], pty.text
        assert run.poll() is None, "ctr run --tty returned at the reboot"
        assert containerd.task_status(container_id) == "RUNNING"

        containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        assert run.wait(20) == 137
    finally:
        end_process(run)
        pty.close()


def test_file_log_uri_gets_every_boot_in_order(
    containerd: Containerd, container_id: str, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "out.log"  # the shim creates the directory
    run_detached(
        containerd, container_id, "sh", "-c", LOGGING_INIT,
        options=("--log-uri", f"file://{log}"),
    )  # fmt: skip
    pid = task_pid(containerd, container_id)
    assert pid
    assert wait_until(lambda: len(read_lines(log)) >= 4, 10), read_lines(log)

    reboot_from_exec(containerd, container_id)
    wait_new_pid(containerd, container_id, pid)
    assert wait_until(lambda: len(read_lines(log)) >= 8, 10), read_lines(log)

    lines = read_lines(log)
    assert [line for line in lines if "line" in line] == boot_lines(1) + boot_lines(2)
    assert [line for line in lines if "err" in line] == ["boot 1 err", "boot 2 err"]
    # Boot 1 is complete in the file before anything of boot 2.
    last_of_1 = max(i for i, line in enumerate(lines) if line.startswith("boot 1"))
    first_of_2 = min(i for i, line in enumerate(lines) if line.startswith("boot 2"))
    assert last_of_1 < first_of_2, lines


LOGGER = """#!/bin/sh
# containerd's logging binary contract: argv is the path then key, value;
# fd 3 = stdout, fd 4 = stderr, fd 5 = closed once ready.
out="$2"
echo "$CONTAINER_NAMESPACE $CONTAINER_ID" > "$out.env"
echo $$ > "$out.pid"
/bin/cat <&3 >> "$out" 4<&- 5>&- &
/bin/cat <&4 >> "$out.err" 3<&- 5>&- &
exec 3<&- 4<&- 5>&-
wait
"""


def test_binary_log_uri_logger_gets_every_boot_and_ends_with_the_task(
    containerd: Containerd, container_id: str, tmp_path: Path
) -> None:
    logger = tmp_path / "logger.sh"
    logger.write_text(LOGGER)
    logger.chmod(0o755)
    out = tmp_path / "out.log"
    err = tmp_path / "out.log.err"
    run_detached(
        containerd, container_id, "sh", "-c", LOGGING_INIT,
        options=("--log-uri", f"binary://{logger}?out={out}"),
    )  # fmt: skip
    pid = task_pid(containerd, container_id)
    assert pid
    assert (tmp_path / "out.log.env").read_text() == (
        f"{containerd.namespace} {container_id}\n"
    )
    logger_pid = int((tmp_path / "out.log.pid").read_text())
    assert wait_until(lambda: len(read_lines(out)) >= 3, 10), read_lines(out)

    reboot_from_exec(containerd, container_id)
    wait_new_pid(containerd, container_id, pid)
    assert wait_until(lambda: len(read_lines(out)) >= 6, 10), read_lines(out)
    assert wait_until(lambda: len(read_lines(err)) >= 2, 10), read_lines(err)

    assert read_lines(out) == boot_lines(1) + boot_lines(2)
    assert read_lines(err) == ["boot 1 err", "boot 2 err"]
    assert not is_gone(logger_pid), "one logger serves every boot"

    # At Delete the shim closes the logger's pipes: it reads EOF and exits.
    containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    assert wait_until(lambda: containerd.task_status(container_id) == "STOPPED", 10)
    containerd.ctr("tasks", "delete", container_id)
    assert wait_until(lambda: is_gone(logger_pid), 10), "the logger outlived its task"


def test_stdin_feeds_the_new_init_after_a_reboot_and_eof_ends_it(
    containerd: Containerd, container_id: str
) -> None:
    script = (
        'while read l; do echo "got $l"; [ "$l" = boot ] && reboot -f; done; echo eof'
    )
    # A foreground ctr run always passes its stdin on (ctr 1.6 has no -i).
    run = subprocess.Popen(
        containerd.ctr_argv(
            ("run", "--runtime", SHIM_RUNTIME, containerd.image, container_id,
             "sh", "-c", script)
        ),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert run.stdin is not None
    out = LineReader(run.stdout)
    try:
        assert wait_until(lambda: bool(task_pid(containerd, container_id)), 20)
        first = task_pid(containerd, container_id)
        assert first
        run.stdin.write("one\ntwo\nboot\n")
        run.stdin.flush()
        assert out.wait_for(lambda lines: "got boot" in lines, 20), out.lines
        # Written once the new init runs: what the old init had in its pipe
        # unread dies with it, as on a real reboot.
        wait_new_pid(containerd, container_id, first)
        run.stdin.write("three\n")
        run.stdin.flush()
        assert out.wait_for(lambda lines: "got three" in lines, 10), out.lines

        # EOF on ctr's stdin -> CloseIO -> the new init reads EOF and exits 0.
        run.stdin.close()
        assert run.wait(20) == 0, run.stderr.read() if run.stderr else None
        out.thread.join(5)
        assert out.lines == ["got one", "got two", "got boot", "got three", "eof"]
    finally:
        end_process(run)
