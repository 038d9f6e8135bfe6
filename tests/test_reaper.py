import asyncio
import os
import signal

from rebootshim.reaper import Reaper, exit_status


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_exit_status_is_code_or_128_plus_signal() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(signal.SIGKILL) == 137


def test_spawned_children_are_reaped_with_their_status() -> None:
    async def main() -> list[int]:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            futs = [reaper.spawn(["/bin/sh", "-c", f"exit {n}"])[1] for n in (0, 3, 7)]
            return [exit_status(s) for s in await asyncio.gather(*futs)]
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    before = fds()
    assert asyncio.run(main()) == [0, 3, 7]
    assert fds() == before


def test_an_exit_reaped_before_anyone_waits_is_kept_for_wait() -> None:
    async def main() -> int:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            # Fork behind the reaper's back, as runc does with an init.
            pid = os.fork()
            if pid == 0:
                os._exit(5)
            await asyncio.sleep(0.2)
            return exit_status(await reaper.wait(pid))
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    assert asyncio.run(main()) == 5


def test_spawn_passes_fds_as_stdio() -> None:
    async def main() -> bytes:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            _, done = reaper.spawn(["/bin/sh", "-c", "echo hello"], stdout=w)
            os.close(w)
            await done
            return os.read(r, 100)
        finally:
            os.close(r)
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    assert asyncio.run(main()) == b"hello\n"


def test_spawn_keeps_a_source_that_sits_on_a_lower_target() -> None:
    # fd 1 handed over as the child's fd 3 must survive the dup2 onto 1.
    async def main() -> bytes:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        r, w = os.pipe2(os.O_CLOEXEC)
        saved = os.dup(1)
        try:
            os.dup2(w, 1)
            _, done = reaper.spawn(["/bin/sh", "-c", "echo via3 >&3"], extra_fds=(1,))
            os.dup2(saved, 1)
            os.close(w)
            await done
            return os.read(r, 100)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(r)
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    assert asyncio.run(main()) == b"via3\n"
