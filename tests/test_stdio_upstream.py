"""Opening the client's stdio: file://, binary://, errors, boots' cleanup."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_stdio_support import close_all, make_fifo, open_fds, take, write_all

from rebootshim.errors import FailedPrecondition, InvalidArgument
from rebootshim.stdio import Upstream

LOGGER = """\
#!{python}
import os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
# As exec'd: Python itself may add LC_CTYPE to os.environ (PEP 538).
with open("/proc/self/environ", "rb") as f:
    env = sorted(f.read().decode().strip("\\0").split("\\0"))
os.close(5)  # ready
out = b""
while chunk := os.read(3, 65536):
    out += chunk
err = b""
while chunk := os.read(4, 65536):
    err += chunk
with open(args["out"], "w") as f:
    f.write(repr((sys.argv[1:], env, out, err)))
"""


class FakeSpawn:
    """The reaper's spawn, minus the reaper: the test reaps what it spawns.

    Like the reaper it dup2s ``extra_fds`` onto 3, 4, 5 in turn.
    """

    def __init__(self) -> None:
        self.pids: list[int] = []

    def __call__(
        self, argv: list[str], *, extra_fds: tuple[int, ...], env: dict[str, str]
    ) -> int:
        actions = [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(extra_fds)]
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        self.pids.append(pid)
        return pid

    def reap(self) -> list[int]:
        return [os.waitpid(pid, 0)[1] for pid in self.pids]


def test_file_uri_appends_both_streams_to_one_file(tmp_path: Path) -> None:
    before = open_fds()
    log = tmp_path / "logs" / "c1" / "out.log"
    uri = f"file://{log}"

    async def run_once(text: bytes) -> None:
        upstream = await Upstream.open("", uri, uri, False, namespace="ns", id="c1")
        boot = upstream.new_boot()
        child = take(boot)
        await boot.started()
        write_all(child.stdout, text + b" out\n")
        write_all(child.stderr, text + b" err\n")
        close_all(child)
        await asyncio.wait_for(upstream.drain(), 10)
        upstream.close()

    asyncio.run(run_once(b"one"))
    asyncio.run(run_once(b"two"))
    lines = log.read_bytes().splitlines()
    assert lines[:2] in ([b"one out", b"one err"], [b"one err", b"one out"])
    assert sorted(lines[2:]) == [b"two err", b"two out"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(log.stat().st_mode) == 0o644 & ~umask
    assert open_fds() == before


def test_binary_uri_logger_receives_output_on_fd_3_and_4(tmp_path: Path) -> None:
    before = open_fds()
    script = tmp_path / "logger"
    script.write_text(LOGGER.format(python=sys.executable))
    script.chmod(0o755)
    result = tmp_path / "result"
    uri = f"binary://{script}?out={result}&flag"
    spawn = FakeSpawn()

    async def main() -> None:
        upstream = await Upstream.open(
            "", uri, uri, False, namespace="ns", id="c1", spawn=spawn
        )
        assert upstream.logger_pid == spawn.pids[0]
        for n in (1, 2):
            boot = upstream.new_boot()
            child = take(boot)
            await boot.started()
            write_all(child.stdout, b"out%d " % n)
            write_all(child.stderr, b"err%d " % n)
            close_all(child)
            await asyncio.wait_for(upstream.drain(), 10)
        upstream.close()  # the logger sees EOF and exits by itself

    asyncio.run(main())
    assert spawn.reap() == [0]
    args, env, out, err = eval(result.read_text())
    assert args == ["out", str(result), "flag", ""]
    assert env == ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=ns"]
    assert (out, err) == (b"out1 out2 ", b"err1 err2 ")
    assert open_fds() == before


def test_logger_that_never_gets_ready_times_out_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    before = open_fds()
    script = tmp_path / "logger"
    # Holds fd 5 open without writing until its stdout pipe ends.
    script.write_text(f"#!{sys.executable}\nimport os\nos.read(3, 1)\n")
    script.chmod(0o755)
    spawn = FakeSpawn()
    uri = f"binary://{script}"
    opening = Upstream.open(
        "", uri, "", False, namespace="ns", id="c1", spawn=spawn, logger_timeout=0.2
    )

    with pytest.raises(FailedPrecondition, match=r"not ready after 0\.2s"):
        asyncio.run(opening)
    assert spawn.reap() == [0]
    assert open_fds() == before


def test_missing_stdout_fifo_gives_a_clear_error_and_leaks_no_fd(
    tmp_path: Path,
) -> None:
    stdin = make_fifo(tmp_path, "stdin")
    missing = str(tmp_path / "gone" / "stdout")
    before = open_fds()
    opening = Upstream.open(stdin, missing, "", False, namespace="ns", id="c1")

    with pytest.raises(InvalidArgument) as caught:
        asyncio.run(opening)
    assert str(caught.value) == (
        f"failed to open stdout fifo {missing}: no such file or directory"
    )
    assert open_fds() == before


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        ("tcp://host/x", "unsupported stdout uri scheme 'tcp'"),
        ("file://relative", "stdout uri has no absolute path"),
    ],
)
def test_bad_uri_is_refused_before_anything_opens(stdout: str, message: str) -> None:
    before = open_fds()
    opening = Upstream.open("", stdout, "", False, namespace="ns", id="c1")

    with pytest.raises(InvalidArgument, match=message):
        asyncio.run(opening)
    assert open_fds() == before


def test_missing_logging_binary_gives_a_clear_error(tmp_path: Path) -> None:
    binary = tmp_path / "no-such-logger"
    before = open_fds()
    opening = Upstream.open(
        "", f"binary://{binary}", "", False, namespace="ns", id="c1", spawn=FakeSpawn()
    )

    with pytest.raises(
        InvalidArgument, match=f"failed to start logging binary {binary}"
    ):
        asyncio.run(opening)
    assert open_fds() == before


def test_aborted_boot_closes_its_pipes(tmp_path: Path) -> None:
    stdout = make_fifo(tmp_path, "stdout")
    reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
    before = open_fds()

    async def main() -> None:
        upstream = await Upstream.open("", stdout, "", False, namespace="ns", id="c1")
        boot = upstream.new_boot()
        boot.abort()  # runc create failed
        boot.abort()
        with pytest.raises(FailedPrecondition, match="stdio boot is aborted"):
            await boot.started()
        upstream.close()
        with pytest.raises(FailedPrecondition, match="stdio of ns/c1 is closed"):
            upstream.new_boot()

    asyncio.run(main())
    assert open_fds() == before
    os.close(reader)


def test_logger_fds_are_lifted_above_the_targets_a_spawn_dup2s_onto() -> None:
    # In a fresh interpreter with fds 3.. free, the pipes land on 3..8, so
    # fd 4 or 5 would be overwritten before its own dup2 without the lift.
    code = """if True:
        import os
        os.closerange(3, 256)
        from rebootshim.stdio.binary import _lift
        fds = [end for _ in range(3) for end in os.pipe2(os.O_CLOEXEC)][::2]
        kinds = [os.fstat(fd).st_ino for fd in fds]
        _lift(fds)
        assert min(fds) >= 6, fds
        assert [os.fstat(fd).st_ino for fd in fds] == kinds
    """
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


def test_a_started_boot_with_all_three_streams_leaks_no_fd(tmp_path: Path) -> None:
    fifos = [make_fifo(tmp_path, name) for name in ("stdin", "stdout", "stderr")]
    readers = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in fifos[1:]]
    writer = os.open(fifos[0], os.O_RDWR)
    before = open_fds()

    async def main() -> None:
        stdin, stdout, stderr = fifos
        upstream = await Upstream.open(
            stdin, stdout, stderr, False, namespace="ns", id="e1"
        )
        for _ in range(3):  # an exec, or the init and two reboots
            boot = upstream.new_boot()
            assert boot.fds is not None
            for fd in set(boot.fds):
                os.fstat(fd)
            await boot.started()
        upstream.close()

    asyncio.run(main())
    assert open_fds() == before
    for fd in (*readers, writer):
        os.close(fd)
