#!/usr/bin/env python3
"""``make demo``: a container reboots three times; containerd never notices.

The demo starts a containerd of its own (config, root, state, sockets and
log in one temporary directory; tests/integration/harness.py), imports the
busybox image of tools/mkimage.py and runs a container on
io.containerd.reboot.v2 with a foreground ``ctr run``, whose stdout it
captures.  The init prints a numbered line every 0.3 s and counts its boots
in /var/boot-count, in the container's writable layer.  The demo reboots it
three times from inside (``reboot -f`` in an exec) and checks from outside,
after each reboot, what containerd and its client see; ``ctr events`` runs
in the background the whole time.  Then it kills and deletes the container
and removes everything it made.

Exit status: 0 if every check held, 1 if one failed, 2 without root.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# demo_watch sits beside this file (sys.path[0]); the harness is the package
# tests/integration, so tests/ goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


from demo_watch import (
    FENCE,
    EventWatch,
    Report,
    Stream,
    Task,
    TaskPoller,
    around_boot,
    init_exits,
    is_milestone,
    processes_naming,
    starts,
)
from integration.harness import KEEP_ENV, Containerd, mounts_under, wait_until

NAMESPACE = "rebootshim-demo"
RUNTIME = "io.containerd.reboot.v2"
POLICY = "io.containerd.reboot.v2.policy=restart:5/60s"
REBOOTS = 3
LINES_PER_BOOT = 5  # printed before the next step, 0.3 s apart
BOOT_TIMEOUT = 20.0
EXIT_STATUS_SIGKILL = 128 + 9
# containerd names shim sockets sha256(address/namespace/id), in a
# directory every containerd on the machine shares.
SHIM_SOCKET_DIR = Path("/run/containerd/s")
MARKER = "/var/marker"
MARKER_TEXT = "written before the first reboot"
INIT_SCRIPT = """\
mkdir -p /var
boot=$(( $(cat /var/boot-count 2>/dev/null || echo 0) + 1 ))
echo $boot > /var/boot-count
i=0
while :; do
  i=$((i + 1))
  echo "boot $boot | pid $$ | line $i"
  sleep 0.3
done"""
INTRO = f"""\
A container runs on {RUNTIME}; its init prints a numbered line
every 0.3 s.  It is rebooted {REBOOTS} times from inside (reboot -f).  Each time,
seen from outside: the same container id stays RUNNING with a new pid, the
foreground ctr run keeps waiting, the writable layer and the output stream go
on, and ctr events records a /tasks/start but no /tasks/exit."""


class DemoError(Exception):
    """A step could not go on; its failed check is already reported."""


class Demo:
    """One container on the reboot runtime, driven and watched with ctr."""

    def __init__(self, ctrd: Containerd, report: Report) -> None:
        self.ctrd = ctrd
        self.report = report
        self.id = ctrd.unique_id("demo")
        self.fifo_dir = ctrd.tmp / "fifo"
        self.stdout_path = ctrd.tmp / "ctr-run.stdout"
        self.stderr_path = ctrd.tmp / "ctr-run.stderr"
        self.events: EventWatch | None = None
        self.run_proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # the init's pid at each boot

    # -- ctr and what it shows ---------------------------------------------------

    def ctr(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            self.report.command(args)
        done = self.ctrd.ctr(*args, check=False, timeout=30)
        if show:
            self.report.block(done.stdout + done.stderr)
        return done

    def exec(self, exec_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``ctr tasks exec``, waiting for the exec's exit."""
        self.report.command(("tasks", "exec", "--exec-id", exec_id, self.id, *argv))
        fifo = ("--fifo-dir", str(self.fifo_dir))
        args = ("tasks", "exec", *fifo, "--exec-id", exec_id, self.id, *argv)
        done = self.ctrd.ctr(*args, check=False, timeout=30)
        self.report.block(done.stdout + done.stderr)
        if done.returncode:
            self.report.block(f"(exit status {done.returncode})")
        return done

    def task(self) -> Task | None:
        """This container's (pid, status) in ``ctr tasks ls``."""
        for line in self.ctr("tasks", "ls", show=False).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 3 and fields[0] == self.id:
                return int(fields[1]), fields[2]
        return None

    def output(self) -> list[str]:
        """The complete lines ``ctr run`` has copied to its stdout so far."""
        return self.stdout_path.read_text(errors="replace").split("\n")[:-1]

    def is_waiting(self) -> bool:
        """The foreground ``ctr run`` still blocks in Wait."""
        return self.run_proc is not None and self.run_proc.poll() is None

    def run_stderr(self) -> str:
        err = self.stderr_path.read_text(errors="replace").strip()
        code = self.run_proc.returncode if self.run_proc else None
        return f"ctr run exited {code}: {err}"

    def fail(self, what: str, why: str = "") -> DemoError:
        self.report.check(False, what, why)
        return DemoError(what)

    # -- setting up ----------------------------------------------------------------

    def start_containerd(self) -> None:
        self.report.section("A private containerd")
        self.report.block(INTRO)
        self.ctrd.spawn()
        self.ctrd.wait_ready()
        assert self.ctrd.proc is not None
        self.report.say(f"containerd pid {self.ctrd.proc.pid}, config.toml:")
        self.report.block(self.ctrd.config_path.read_text())
        self.report.say(f"below, `ctr` is `ctr --address {self.ctrd.address}`")
        self.report.say(f"  `--namespace {NAMESPACE}`; execs add `--fifo-dir`")
        self.report.check(True, "containerd answers on its own socket")

    def watch_events(self) -> None:
        self.report.section("ctr events in the background; the busybox image")
        path = self.ctrd.tmp / "events.log"
        events = EventWatch(self.ctrd.ctr_argv(("events",)), path)
        self.events = events
        self.report.say("tools/mkimage.py builds the image; ctr images import loads it")
        self.ctrd.import_image()
        self.ctr("images", "ls", "--quiet")

        def has_image_event() -> bool:
            return any(e.topic == "/images/create" for e in events.events())

        seen = wait_until(has_image_event, 10.0)
        self.report.check(seen, "ctr events is recording (it saw /images/create)")

    def run_container(self) -> None:
        self.report.section(f"Run a container on {RUNTIME}")
        self.report.say("its init, a shell loop (boot count kept in /var/boot-count):")
        self.report.block(INIT_SCRIPT)
        self.start_ctr_run()
        self.report.say(f"{POLICY}: at most 5 reboots in 60 s")
        self.wait_boot(1)
        self.ctr("tasks", "ls")
        self.report.say("its stdout so far:")
        self.report.block("\n".join(self.output()))

    def start_ctr_run(self) -> None:
        """A foreground ``ctr run``: it copies the FIFOs, then waits."""
        options = ("run", "--runtime", RUNTIME, "--annotation", POLICY)
        fifo = ("--fifo-dir", str(self.fifo_dir))
        args = (*options, *fifo, self.ctrd.image, self.id, "sh", "-c", INIT_SCRIPT)
        self.report.command((*options, self.ctrd.image, self.id, "sh", "-c", "..."))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.run_proc = subprocess.Popen(
                self.ctrd.ctr_argv(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        pid = self.run_proc.pid
        self.report.say(f"ctr run stays in the foreground (pid {pid}), in Wait")

    def wait_boot(self, boot: int) -> None:
        """Wait for a new pid RUNNING, then for boot's first lines."""
        self.pids.append(self.wait_new_pid())

        def has_lines() -> bool:
            return Stream.of(self.output()).lines.get(boot, 0) >= LINES_PER_BOOT

        if not wait_until(has_lines, BOOT_TIMEOUT):
            raise self.fail(f"boot {boot} prints to ctr run's stdout")

    def wait_new_pid(self) -> int:
        found: list[int] = []

        def has_new_pid() -> bool:
            if not self.is_waiting():
                raise self.fail("the foreground ctr run still waits", self.run_stderr())
            task = self.task()
            if task and task[1] == "RUNNING" and task[0] not in self.pids:
                found.append(task[0])
            return bool(found)

        if not wait_until(has_new_pid, BOOT_TIMEOUT, step=0.05):
            raise self.fail(f"a new pid RUNNING within {BOOT_TIMEOUT:.0f} s")
        return found[0]

    def write_marker(self) -> None:
        self.report.section("A marker file in the writable layer")
        self.exec("write-marker", "sh", "-c", f'echo "{MARKER_TEXT}" > {MARKER}')
        done = self.exec("cat-marker-0", "cat", MARKER)
        self.report.check(done.stdout.strip() == MARKER_TEXT, f"{MARKER} written")

    # -- the reboots -----------------------------------------------------------------

    def reboot(self, n: int) -> None:
        self.report.section(f"Reboot {n} of {REBOOTS}, from inside the container")
        old = self.pids[-1]
        self.report.say("a fence line into the init's stdout, then reboot(2):")
        poller = TaskPoller(self.task)
        try:
            fence = f'echo "{FENCE.format(n)}" > /proc/1/fd/1'
            self.exec(f"fence-{n}", "sh", "-c", fence)
            self.exec(f"reboot-{n}", "reboot", "-f")
            self.wait_boot(n + 1)
        finally:
            polls = poller.stop()
        self.check_task(old, polls)
        self.check_layer(n)
        self.check_output(n)

    def check_task(self, old: int, polls: list[Task | None]) -> None:
        new = self.pids[-1]
        shown = self.ctr("tasks", "ls").stdout
        ok = f"{self.id} {new} RUNNING" in " ".join(shown.split())
        self.report.check(ok, f"same id, RUNNING, new pid: {old} -> {new}")
        statuses = sorted({task[1] if task else "no task" for task in polls})
        pids = sorted({task[0] for task in polls if task})
        self.report.check(
            statuses == ["RUNNING"] and pids == sorted({old, new}),
            f"ctr tasks ls, polled {len(polls)} times during the reboot: RUNNING,"
            f" pid {old} then {new}",
            f"it showed {statuses}, pids {pids}",
        )
        self.report.check(self.is_waiting(), "the foreground ctr run still waits")

    def check_layer(self, n: int) -> None:
        marker = self.exec(f"cat-marker-{n}", "cat", MARKER)
        ok = marker.stdout.strip() == MARKER_TEXT
        self.report.check(ok, f"the marker file {MARKER} is still there")
        count = self.exec(f"cat-boot-count-{n}", "cat", "/var/boot-count")
        ok = count.stdout.strip() == str(n + 1)
        self.report.check(ok, f"/var/boot-count went on to {n + 1}")

    def check_output(self, n: int) -> None:
        lines = self.output()
        self.report.say(f"ctr run's stdout around the reboot ({len(lines)} lines):")
        self.report.block("\n".join(around_boot(lines, n + 1)))
        stream = Stream.of(lines)
        self.report.check(
            not stream.problems and stream.boot == n + 1,
            f"one stream: boot {n}'s {stream.lines.get(n)} lines, the fence, then"
            f" boot {n + 1} from line 1; nothing lost, nothing out of order",
            "\n".join(stream.problems[:5]),
        )
        if logged := self.shim_log_line("msg=rebooted", f"reboot_count={n}"):
            self.report.say(f"the shim's log: {logged}")

    def shim_log_line(self, *words: str) -> str | None:
        """The last line of the shim's log (in containerd's) with all words."""
        needles = (f"id={self.id}", *words)
        text = self.ctrd.log_path.read_text(errors="replace")
        found = [ln for ln in text.splitlines() if all(w in ln for w in needles)]
        return re.sub(r"^time=\S+ ", "", found[-1]) if found else None

    # -- what containerd recorded, and the end ----------------------------------

    def check_events(self) -> None:
        self.report.section("What ctr events recorded for the container")
        assert self.events is not None
        events = self.events.events(self.id)
        shown = [e for e in events if is_milestone(e)]
        self.report.block("\n".join(e.describe() for e in shown))
        self.report.say(f"(and {len(events) - len(shown)} events of the other execs)")
        pids = starts(events)
        self.report.check(
            pids == self.pids,
            f"{len(pids)} /tasks/start, one per boot, with the pids of ctr tasks ls",
            f"expected {self.pids}",
        )
        exits = init_exits(events, self.id)
        self.report.check(not exits, "no /tasks/exit for the init", f"got {exits}")
        execs = [e.body["id"] for e in events if e.topic == "/tasks/exit"]
        reboots = [f"reboot-{n}" for n in range(1, REBOOTS + 1)]
        ok = all(r in execs for r in reboots)
        self.report.check(ok, f"the exits of {', '.join(reboots)} were published")

    def kill(self) -> None:
        self.report.section("Kill: the one real exit")
        assert self.run_proc is not None and self.events is not None
        self.ctr("tasks", "kill", "--signal", "SIGKILL", self.id)
        try:
            code = self.run_proc.wait(BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self.fail("ctr run returns after the kill") from None
        self.report.say(f"the foreground ctr run returned {code}")
        ok = code == EXIT_STATUS_SIGKILL
        self.report.check(ok, "its Wait returned only now, 137 = 128 + SIGKILL")
        events = self.events
        wait_until(lambda: bool(init_exits(events.events(self.id), self.id)), 10.0)
        exits = init_exits(events.events(self.id), self.id)
        self.report.block("\n".join(e.describe() for e in exits))
        ok = [e.body.get("exit_status") for e in exits] == [EXIT_STATUS_SIGKILL]
        self.report.check(ok, "one /tasks/exit for the init, exit_status 137")
        self.check_whole_output()

    def check_whole_output(self) -> None:
        lines = self.output()
        self.report.say(f"the tail of ctr run's stdout ({len(lines)} lines):")
        self.report.block("\n".join(lines[-6:]))
        stream = Stream.of(lines)
        self.report.say(stream.describe())
        self.report.check(
            not stream.problems and stream.boot == REBOOTS + 1,
            f"the whole stream: boots 1-{REBOOTS + 1} in order, every line there",
            "\n".join(stream.problems[:5]),
        )

    def delete(self) -> None:
        self.report.section("Delete")
        self.report.say(
            "ctr run deleted the task after its Wait; the container is left"
        )
        self.ctr("tasks", "ls")
        self.ctr("containers", "delete", self.id)
        listed = self.ctr("containers", "ls", "--quiet").stdout.split()
        self.report.check(self.id not in listed, f"container {self.id} deleted")

    def run(self) -> None:
        self.start_containerd()
        self.watch_events()
        self.run_container()
        self.write_marker()
        for n in range(1, REBOOTS + 1):
            self.reboot(n)
        self.check_events()
        self.kill()
        self.delete()

    # -- after a failure, and always at the end ----------------------------------

    def diagnose(self, error: BaseException) -> None:
        """What was seen, before teardown removes the logs."""
        if not isinstance(error, DemoError):
            self.report.check(False, "the demo ran to its end", repr(error))
        if not self.ctrd.log_path.exists():
            return
        self.report.say("containerd's log: warnings and errors of or about the shim")
        lines = [
            line
            for line in self.ctrd.log_tail(2000).splitlines()
            if re.search(r"level=(warn|error)", line)
            and ("shim" in line or f"id={self.id}" in line)
        ]
        self.report.block("\n".join(lines[-20:]) or "(none)")

    def stop_clients(self) -> None:
        """End the ctr processes we started, by pid; the task first."""
        if self.is_waiting():
            self.ctrd.cleanup_container(self.id)
            assert self.run_proc is not None
            try:
                self.run_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.run_proc.kill()
                self.run_proc.wait()
        if self.events is not None:
            self.events.stop()


def teardown(demo: Demo) -> None:
    """Stop containerd and remove its directory; check nothing is left."""
    ctrd, report = demo.ctrd, demo.report
    report.section("Clean up")
    demo.stop_clients()
    if ctrd.proc is not None and ctrd.proc.poll() is None:
        ctrd.cleanup_all()
        left = mounts_under(ctrd.tmp)
        report.check(not left, "nothing mounted under the temporary dir", str(left))
    ctrd.stop()
    if ctrd.proc is not None:
        stopped = ctrd.proc.poll() is not None
        report.check(stopped, f"containerd (pid {ctrd.proc.pid}) stopped")
    report.check(not mounts_under(ctrd.tmp), "still nothing mounted there after it")
    if os.environ.get(KEEP_ENV):
        report.say(f"kept {ctrd.tmp} ({KEEP_ENV} is set)")
    else:
        report.check(not ctrd.tmp.exists(), f"{ctrd.tmp} removed")
    check_shim_gone(demo)


def check_shim_gone(demo: Demo) -> None:
    """No shim socket and no process of this containerd may outlive it."""
    key = f"{demo.ctrd.address}/{NAMESPACE}/{demo.id}".encode()
    socket_path = SHIM_SOCKET_DIR / hashlib.sha256(key).hexdigest()
    left = socket_path.exists()
    demo.report.check(not left, f"no shim socket left in {SHIM_SOCKET_DIR}")
    if left:
        socket_path.unlink()  # ours: named after our containerd's address
    tmp = str(demo.ctrd.tmp)
    wait_until(lambda: not processes_naming(tmp), 5.0)
    pids = processes_naming(tmp)
    demo.report.check(
        not pids, "no process left that names the temporary dir", str(pids)
    )
    for pid in pids:  # a shim of our containerd: SIGTERM ends a shim
        os.kill(pid, signal.SIGTERM)


def summarize(report: Report, seconds: float) -> None:
    report.section("Summary")
    failed = report.failed
    if failed:
        report.say(
            report.paint(f"{len(failed)} of {len(report.results)} failed:", "31")
        )
        for what in failed:
            report.say(f"  {report.paint('✗', '31')} {what}")
    else:
        report.say(report.paint(f"all {len(report.results)} checks passed:", "32"))
        report.block(
            f"the container rebooted {REBOOTS} times under one id; containerd saw it\n"
            "RUNNING throughout with a new pid and a /tasks/start per boot, and no\n"
            "exit until the kill; the writable layer and the output stream went on."
        )
    report.say(f"run time {seconds:.1f} s")


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (containerd, runc, mounts)", file=sys.stderr)
        return 2
    began = time.monotonic()
    ctrd = Containerd(Path(tempfile.mkdtemp(prefix="rebootshim-demo-")))
    ctrd.namespace = NAMESPACE
    demo = Demo(ctrd, Report(sys.stdout.isatty()))
    try:
        demo.run()
    except Exception as exc:
        demo.diagnose(exc)
    except KeyboardInterrupt:
        demo.report.check(False, "the demo ran to its end", "interrupted")
    finally:
        teardown(demo)

    summarize(demo.report, time.monotonic() - began)
    return 1 if demo.report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
