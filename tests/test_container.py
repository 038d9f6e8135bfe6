"""The container state machine and reboot flow, with runc, the reaper and
stdio replaced by fakes: every step is deterministic here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, cast

import pytest

from rebootshim.container.container import Container
from rebootshim.container.process import Exec, Stdio
from rebootshim.container.reboot import Mode, Policy
from rebootshim.container.state import State
from rebootshim.errors import FailedPrecondition, NotFound
from rebootshim.runtime.runc import RuncError

SIGHUP, SIGINT = int(signal.SIGHUP), int(signal.SIGINT)
SPEC: dict[str, Any] = {
    "process": {"args": ["sh"]},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
}


class FakeBoot:
    fds = None
    console_socket = None

    async def started(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FakeUpstream:
    def __init__(self) -> None:
        self.boots = 0
        self.closed = False

    def new_boot(self) -> FakeBoot:
        self.boots += 1
        return FakeBoot()

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeReaper:
    def __init__(self) -> None:
        self.futures: dict[int, asyncio.Future[int]] = {}

    def wait(self, pid: int) -> asyncio.Future[int]:
        if pid not in self.futures:
            self.futures[pid] = asyncio.get_running_loop().create_future()
        return self.futures[pid]

    def die(self, pid: int, status: int) -> None:
        self.wait(pid).set_result(status)


class FakeRunc:
    """Writes pid files like runc; ``gate`` can hold a call midway."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.gate_on = "delete"
        self.gated = asyncio.Event()
        self.fail_on: set[str] = set()

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.gate is not None and name == self.gate_on:
            self.gated.set()
            await self.gate.wait()
        if name in self.fail_on:
            raise RuncError(f"runc {name} failed: injected")

    async def create(self, id: str, bundle: str, pid_file: str, *_: Any) -> None:
        await self._step("create")
        self.next_pid += 1
        Path(pid_file).write_text(str(self.next_pid))

    async def start(self, id: str, bundle: str) -> None:
        await self._step("start")

    def remove_stopped(self, id: str) -> bool:
        return False  # as if anything were unexpected: runc delete runs

    async def delete(self, id: str, bundle: str, force: bool = False) -> None:
        await self._step("delete")

    async def kill(self, id: str, bundle: str, sig: int, all: bool = False) -> None:
        await self._step(f"kill {sig}")

    async def pause(self, id: str, bundle: str) -> None:
        await self._step("pause")

    async def resume(self, id: str, bundle: str) -> None:
        await self._step("resume")

    async def update(self, id: str, bundle: str, resources: Any) -> None:
        await self._step("update")

    async def exec(self, id: str, bundle: str, process: Any, pid_file: str,
                   *_: Any) -> None:  # fmt: skip
        await self._step("exec")
        if process["args"] == ["missing"]:
            raise RuncError("runc exec failed: executable file not found")
        self.next_pid += 1
        Path(pid_file).write_text(str(self.next_pid))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def started(self, id: str, pid: int) -> None:
        self.events.append(("start", str(pid)))

    def exec_started(self, id: str, exec_id: str, pid: int) -> None:
        self.events.append(("exec-started", exec_id))

    def exited(
        self, id: str, process_id: str, pid: int, status: int, at: float
    ) -> None:
        self.events.append(("exit", process_id, str(status)))

    def oom(self, id: str) -> None:
        self.events.append(("oom", id))


@pytest.fixture(autouse=True)
def no_oom_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake pids have no cgroup of ours to watch."""
    monkeypatch.setattr("rebootshim.runtime.oom.watch_oom", lambda pid, cb: None)


class World:
    def __init__(self, bundle: Path, policy: Policy) -> None:
        (bundle / "config.json").write_text(json.dumps(SPEC))
        self.runc, self.reaper, self.events = FakeRunc(), FakeReaper(), Recorder()
        self.upstream = FakeUpstream()
        self.container = Container(
            "c1",
            "ns",
            str(bundle),
            Stdio(),
            cast(Any, self.upstream),
            cast(Any, self.runc),
            cast(Any, self.reaper),
            self.events,
            SPEC,
            policy,
        )

    async def running(self) -> int:
        await self.container.create()
        return await self.container.start()

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


DEFAULT = Policy()


def run(bundle: Path, body: Any, policy: Policy = DEFAULT) -> None:
    async def main() -> None:
        await body(World(bundle, policy))

    asyncio.run(main())


def test_a_sighup_death_recreates_the_container_with_a_new_pid(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.reaper.die(old, SIGHUP)
        await w.settle()
        await w.container.wait_reboot()
        assert w.container.state is State.RUNNING
        assert w.container.pid != old
        assert w.runc.calls == ["create", "start", "delete", "create", "start"]
        assert w.events.events == [("start", str(old)), ("start", str(w.container.pid))]
        assert w.upstream.boots == 2 and not w.upstream.closed

    run(tmp_path, body)


def test_wait_does_not_return_across_a_reboot(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        waiter = asyncio.ensure_future(w.container.wait())
        w.reaper.die(old, SIGHUP)
        await w.settle()
        await w.container.wait_reboot()
        assert not waiter.done()
        w.reaper.die(w.container.pid, signal.SIGKILL)
        exit = await asyncio.wait_for(waiter, 2)
        assert exit.status == 137

    run(tmp_path, body)


def test_poweroff_ends_the_container_with_130(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        pid = await w.running()
        w.reaper.die(pid, SIGINT)
        exit = await asyncio.wait_for(w.container.wait(), 2)
        assert exit.status == 130
        assert ("exit", "c1", "130") in w.events.events
        assert "delete" not in w.runc.calls

    run(tmp_path, body)


def test_exit_policy_turns_a_reboot_into_an_exit_129(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        pid = await w.running()
        w.reaper.die(pid, SIGHUP)
        assert (await asyncio.wait_for(w.container.wait(), 2)).status == 129

    run(tmp_path, body, Policy(Mode.EXIT))


def test_the_reboot_past_the_storm_bound_exits_129(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.running()
        for _ in range(2):
            w.reaper.die(w.container.pid, SIGHUP)
            await w.settle()
            await w.container.wait_reboot()
        w.reaper.die(w.container.pid, SIGHUP)
        assert (await asyncio.wait_for(w.container.wait(), 2)).status == 129
        assert w.container.reboot_count == 2

    run(tmp_path, body, Policy(Mode.RESTART, 2, 60.0))


def test_a_kill_during_the_restart_wins(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.runc.gate = asyncio.Event()
        w.reaper.die(old, SIGHUP)
        await w.runc.gated.wait()
        assert w.container.state is State.REBOOTING
        await w.container.kill(signal.SIGKILL, False)
        w.runc.gate.set()
        exit = await asyncio.wait_for(w.container.wait(), 2)
        assert exit.status == 137
        assert w.runc.calls.count("create") == 1  # nothing resurrected
        assert w.events.events[-1] == ("exit", "c1", "137")

    run(tmp_path, body)


def test_a_delete_during_the_restart_ends_the_container(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.runc.gate = asyncio.Event()
        w.reaper.die(old, SIGHUP)
        await w.runc.gated.wait()
        deleting = asyncio.ensure_future(w.container.delete())
        await w.settle()
        w.runc.gate.set()
        await asyncio.wait_for(deleting, 2)
        assert w.container.state is State.DELETED
        assert w.runc.calls.count("create") == 1
        assert w.upstream.closed

    run(tmp_path, body)


def test_a_sighup_sent_through_kill_is_an_exit(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        pid = await w.running()
        await w.container.kill(SIGHUP, False)
        w.reaper.die(pid, SIGHUP)
        assert (await asyncio.wait_for(w.container.wait(), 2)).status == 129
        assert w.runc.calls.count("create") == 1

    run(tmp_path, body)


def test_execs_exit_before_the_init_and_before_the_reboot(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        pid = await w.running()
        proc = Exec("e1", Stdio(), cast(Any, FakeUpstream()), {"args": ["sleep"]})
        w.container.execs["e1"] = proc
        exec_pid = await w.container.start_exec(proc)
        w.reaper.die(pid, SIGHUP)
        await w.settle()
        assert w.container.state is State.REBOOTING
        w.reaper.die(exec_pid, signal.SIGKILL)
        await w.container.wait_reboot()
        names = [e[0] for e in w.events.events]
        assert names == ["start", "exec-started", "exit", "start"]
        assert w.events.events[2] == ("exit", "e1", "137")

    run(tmp_path, body)


def test_kill_of_a_stopped_container_raises_not_found(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        pid = await w.running()
        w.reaper.die(pid, 0)
        await asyncio.wait_for(w.container.wait(), 2)
        with pytest.raises(NotFound):
            await w.container.kill(signal.SIGTERM, False)

    run(tmp_path, body)


def test_delete_of_a_running_container_is_refused(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.running()
        with pytest.raises(FailedPrecondition):
            await w.container.delete()

    run(tmp_path, body)


def test_no_pid_file_is_left_after_an_exec_starts(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.running()
        proc = Exec("e2", Stdio(), cast(Any, FakeUpstream()), {"args": ["true"]})
        await w.container.start_exec(proc)
        assert not os.path.exists(tmp_path / "e2.pid")

    run(tmp_path, body)


def test_a_failed_exec_start_closes_its_stdio_and_ends_its_wait(
    tmp_path: Path,
) -> None:
    async def body(w: World) -> None:
        await w.running()
        upstream = FakeUpstream()
        proc = Exec("bad", Stdio(), cast(Any, upstream), {"args": ["missing"]})
        waiter = asyncio.ensure_future(proc.wait())
        with pytest.raises(RuncError):
            await w.container.start_exec(proc)
        assert upstream.closed
        assert (await asyncio.wait_for(waiter, 2)).status == 255
        assert proc.state is State.STOPPED
        assert not any(e[0] == "exec-started" for e in w.events.events)

    run(tmp_path, body)


def test_a_kill_during_the_restarts_runc_start_still_wins(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.runc.gate, w.runc.gate_on = asyncio.Event(), "start"
        w.reaper.die(old, SIGHUP)
        await w.runc.gated.wait()
        await w.container.kill(signal.SIGKILL, False)
        w.runc.gate.set()
        assert (await asyncio.wait_for(w.container.wait(), 2)).status == 137
        assert w.runc.calls[-1] == "delete"  # the started boot is removed
        assert [e[0] for e in w.events.events].count("start") == 1

    run(tmp_path, body)


def test_an_init_that_dies_while_paused_still_reboots(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        await w.container.pause()
        w.reaper.die(old, SIGHUP)
        await w.settle()
        await w.container.wait_reboot()
        assert w.container.state is State.RUNNING and w.container.pid != old

    run(tmp_path, body)


def test_a_resume_racing_a_reboot_does_not_claim_running(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        await w.container.pause()
        w.runc.gate, w.runc.gate_on = asyncio.Event(), "resume"
        resuming = asyncio.ensure_future(w.container.resume())
        await w.runc.gated.wait()
        w.reaper.die(old, SIGHUP)  # exits while runc resume runs
        await w.settle()
        w.runc.gate.set()
        await resuming
        await w.container.wait_reboot()
        assert w.container.state is State.RUNNING and w.container.pid != old

    run(tmp_path, body)


def test_an_old_ignored_sighup_does_not_turn_a_reboot_into_an_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rebootshim.container.container.SIGNAL_GRACE", 0.0)

    async def body(w: World) -> None:
        old = await w.running()
        await w.container.kill(SIGHUP, False)  # "reload": the init ignores it
        w.reaper.die(old, SIGHUP)  # later, a real reboot
        await w.settle()
        await w.container.wait_reboot()
        assert w.container.state is State.RUNNING and w.container.pid != old

    run(tmp_path, body)


def test_an_update_during_a_restart_applies_to_the_new_boot(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.runc.gate, w.runc.gate_on = asyncio.Event(), "create"
        w.reaper.die(old, SIGHUP)
        await w.settle()
        updating = asyncio.ensure_future(w.container.update({"pids": {"limit": 9}}))
        await w.runc.gated.wait()
        w.runc.gate.set()
        await asyncio.wait_for(updating, 2)
        assert w.runc.calls[-2:] == ["start", "update"]
        assert w.container.spec["linux"]["resources"] == {"pids": {"limit": 9}}

    run(tmp_path, body)


def test_a_restart_whose_runc_delete_keeps_failing_ends_the_container(
    tmp_path: Path,
) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        w.runc.fail_on = {"delete"}
        w.reaper.die(old, SIGHUP)
        exit = await asyncio.wait_for(w.container.wait(), 2)
        assert exit.status == 129
        assert w.container.state is State.STOPPED
        assert w.events.events[-1] == ("exit", "c1", "129")

    run(tmp_path, body)


def test_an_exec_that_races_a_reboot_runs_in_the_new_boot(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = await w.running()
        proc = Exec("late", Stdio(), cast(Any, FakeUpstream()), {"args": ["missing"]})
        w.runc.gate, w.runc.gate_on = asyncio.Event(), "exec"
        starting = asyncio.ensure_future(w.container.start_exec(proc))
        await w.runc.gated.wait()
        w.reaper.die(old, SIGHUP)  # the reboot lands while runc exec runs
        proc.spec = {"args": ["true"]}  # the first try fails, as runc would
        w.runc.gate.set()
        pid = await asyncio.wait_for(starting, 2)
        assert proc.state is State.RUNNING and pid == proc.pid
        assert w.container.pid != old
        assert w.runc.calls.count("exec") == 2

    run(tmp_path, body)
