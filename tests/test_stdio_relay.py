"""The relays across boots: order, completeness, stdin hand-over, splice."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_stdio_support import (
    FifoReader,
    close_all,
    is_readable,
    make_fifo,
    open_fds,
    read_exactly,
    take,
    write_all,
)

from rebootshim.stdio import Upstream


async def open_upstream(
    stdin: str = "", stdout: str = "", stderr: str = ""
) -> Upstream:
    return await Upstream.open(stdin, stdout, stderr, False, namespace="ns", id="c1")


def test_fifo_output_of_three_boots_arrives_complete_and_in_order(
    tmp_path: Path,
) -> None:
    before = open_fds()
    stdout = make_fifo(tmp_path, "stdout")
    client = FifoReader(stdout, delay=0.002, chunk=8192)
    # Each boot writes more than a pipe and the FIFO hold together.
    outputs = [bytes([ord("a") + n]) * 300_000 for n in range(3)]

    async def main() -> None:
        upstream = await open_upstream(stdout=stdout)
        writers = []
        for data in outputs:
            boot = upstream.new_boot()
            child = take(boot)
            await boot.started()
            # The boots write at once; only the relay keeps them apart.
            writers.append(asyncio.to_thread(_write_and_exit, child, data))
        await asyncio.gather(*writers)
        await asyncio.wait_for(upstream.drain(), 30)
        upstream.close()

    asyncio.run(main())
    expected = b"".join(outputs)
    assert client.wait_for(len(expected)) == expected
    client.close()
    assert open_fds() == before


def test_boot_whose_writer_stays_open_delays_the_next_boots_output(
    tmp_path: Path,
) -> None:
    before = open_fds()
    stdout = make_fifo(tmp_path, "stdout")
    client = FifoReader(stdout)

    async def main() -> None:
        upstream = await open_upstream(stdout=stdout)
        first, second = upstream.new_boot(), upstream.new_boot()
        old, new = take(first), take(second)
        await first.started()
        await second.started()
        write_all(old.stdout, b"old-1 ")
        _write_and_exit(new, b"new")
        assert client.wait_for(6) == b"old-1 "
        drain = asyncio.create_task(upstream.drain())
        await asyncio.sleep(0.2)
        assert client.data() == b"old-1 "
        assert not drain.done()
        _write_and_exit(old, b"old-2 ")
        await asyncio.wait_for(drain, 10)
        upstream.close()

    asyncio.run(main())
    assert client.wait_for(15) == b"old-1 old-2 new"
    client.close()
    assert open_fds() == before


def test_stdin_reaches_boot_one_then_after_its_reboot_boot_two(
    tmp_path: Path,
) -> None:
    before = open_fds()
    stdin = make_fifo(tmp_path, "stdin")

    async def main() -> None:
        upstream = await open_upstream(stdin=stdin)
        client = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        first = upstream.new_boot()
        old = take(first)
        await first.started()
        os.write(client, b"first")
        assert read_exactly(old.stdin, 5) == b"first"
        close_all(old)  # the reboot: boot one's stdin is gone
        os.write(client, b"second")
        await asyncio.sleep(0.1)  # let the relay find boot one gone
        second = upstream.new_boot()
        new = take(second)
        await second.started()
        assert read_exactly(new.stdin, 6) == b"second"
        close_all(new)
        os.close(client)
        upstream.close()

    asyncio.run(main())
    assert open_fds() == before


def test_stdin_written_before_the_first_boot_reaches_it(tmp_path: Path) -> None:
    before = open_fds()
    stdin = make_fifo(tmp_path, "stdin")

    async def main() -> None:
        upstream = await open_upstream(stdin=stdin)
        client = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        os.write(client, b"early")
        await asyncio.sleep(0.1)
        boot = upstream.new_boot()
        child = take(boot)
        await boot.started()
        assert read_exactly(child.stdin, 5) == b"early"
        close_all(child)
        os.close(client)
        upstream.close()

    asyncio.run(main())
    assert open_fds() == before


def test_close_io_and_client_close_give_the_current_boot_eof(tmp_path: Path) -> None:
    before = open_fds()
    stdin = make_fifo(tmp_path, "stdin")

    async def main() -> None:
        upstream = await open_upstream(stdin=stdin)
        client = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        boot = upstream.new_boot()
        child = take(boot)
        await boot.started()
        os.write(client, b"last")
        upstream.close_stdin()
        assert read_exactly(child.stdin, 4) == b"last"
        # The client still holds its end: no EOF yet.
        assert not is_readable(child.stdin, 0.2)
        os.close(client)
        assert read_exactly(child.stdin, 1) == b""
        # A later boot (a reboot) reads EOF at once.
        later = upstream.new_boot()
        again = take(later)
        await later.started()
        assert read_exactly(again.stdin, 1) == b""
        close_all(child)
        close_all(again)
        upstream.close()

    asyncio.run(main())
    assert open_fds() == before


def test_64_mib_through_splice_arrive_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_fds()
    splices = _count_calls(monkeypatch, "splice")
    stdout = make_fifo(tmp_path, "stdout")
    client = FifoReader(stdout, chunk=1 << 20)
    blocks = [os.urandom(1 << 20) for _ in range(64)]

    async def main() -> None:
        upstream = await open_upstream(stdout=stdout)
        boot = upstream.new_boot()
        child = take(boot)
        await boot.started()
        await asyncio.to_thread(_write_and_exit, child, b"".join(blocks))
        await asyncio.wait_for(upstream.drain(), 60)
        upstream.close()

    asyncio.run(main())
    received = client.wait_for(64 << 20)
    client.close()
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()
    assert len(received) == 64 << 20
    assert hashlib.sha256(received).hexdigest() == expected
    assert splices() > 0
    assert open_fds() == before


def test_close_stops_a_relay_whose_boot_never_ends(tmp_path: Path) -> None:
    before = open_fds()
    stdout = make_fifo(tmp_path, "stdout")
    stdin = make_fifo(tmp_path, "stdin")
    client = FifoReader(stdout)

    async def main() -> None:
        upstream = await open_upstream(stdin=stdin, stdout=stdout)
        boot = upstream.new_boot()
        child = take(boot)
        await boot.started()
        drain = asyncio.create_task(upstream.drain())
        await asyncio.sleep(0.1)
        upstream.close()
        upstream.close()  # idempotent
        await asyncio.wait_for(drain, 5)  # close() releases drain()
        close_all(child)

    asyncio.run(main())
    client.close()
    assert open_fds() == before


def _write_and_exit(child: tuple[int, int, int], data: bytes) -> None:
    """A boot writes ``data`` to stdout and exits (closes its fds)."""
    write_all(child[1], data)
    for fd in set(child):
        os.close(fd)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> Callable[[], int]:
    """Count calls of ``os.<name>`` from now on."""
    real = getattr(os, name)
    calls = [0]

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, counting)
    return lambda: calls[0]


def test_an_unread_fifo_holds_many_short_lines_not_one_per_slot(
    tmp_path: Path,
) -> None:
    import fcntl
    import struct
    import termios
    import time

    from rebootshim.stdio.output import OutputRelay

    def queued(fd: int) -> int:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4)
        return int(struct.unpack("i", raw)[0])

    sink = os.open(make_fifo(tmp_path, "out"), os.O_RDWR | os.O_CLOEXEC)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    relay = OutputRelay("t", sink)
    try:
        relay.push(read_end)
        for _ in range(400):  # a trickle: each line moves on its own
            os.write(write_end, b"line\n")
            time.sleep(0.0005)
        deadline = time.monotonic() + 5
        while queued(sink) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queued(sink) == 2000  # splice per line would stop at 16
    finally:
        os.close(write_end)
        relay.close()
        os.close(sink)
