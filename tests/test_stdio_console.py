"""Terminal boots: a real pty pair stands in for the one runc would make."""

from __future__ import annotations

import asyncio
import os
import socket
import tty
from pathlib import Path

import pytest
from test_stdio_support import (
    FifoReader,
    get_winsize,
    make_fifo,
    open_fds,
    read_exactly,
)

from rebootshim.errors import FailedPrecondition
from rebootshim.stdio import Boot, Upstream


def hand_over_pty(boot: Boot) -> int:
    """Do what runc does: make a pty, send the master to the console socket.

    Returns the slave, the container's terminal.
    """
    assert boot.fds is None and boot.console_socket is not None
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF mangling: bytes stay bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(boot.console_socket)
        socket.send_fds(sock, [os.ttyname(slave).encode()], [master])
    os.close(master)
    return slave


def test_terminal_boots_relay_both_ways_and_keep_the_window_size(
    tmp_path: Path,
) -> None:
    before = open_fds()
    stdin, stdout = make_fifo(tmp_path, "stdin"), make_fifo(tmp_path, "stdout")
    client = FifoReader(stdout)

    async def main() -> None:
        upstream = await Upstream.open(stdin, stdout, "", True, namespace="ns", id="c1")
        keyboard = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        upstream.resize(80, 24)  # before the first boot: remembered
        first = upstream.new_boot()
        console_socket = first.console_socket
        assert console_socket is not None
        slave = hand_over_pty(first)
        await first.started()
        assert not os.path.exists(os.path.dirname(console_socket))
        assert get_winsize(slave) == (80, 24)
        os.write(slave, b"boot one\n")
        os.write(keyboard, b"typed\n")
        assert read_exactly(slave, 6) == b"typed\n"
        upstream.resize(100, 40)
        assert get_winsize(slave) == (100, 40)
        os.close(slave)  # the reboot: every slave fd is gone, the master EIOs

        second = upstream.new_boot()
        slave = hand_over_pty(second)
        await second.started()
        assert get_winsize(slave) == (100, 40)
        os.write(keyboard, b"again\n")
        assert read_exactly(slave, 6) == b"again\n"
        os.write(slave, b"boot two\n")
        os.close(slave)
        await asyncio.wait_for(upstream.drain(), 10)
        os.close(keyboard)
        upstream.close()

    asyncio.run(main())
    assert client.wait_for(18) == b"boot one\nboot two\n"
    client.close()
    assert open_fds() == before


def test_terminal_boot_without_a_master_fails_and_cleans_up(tmp_path: Path) -> None:
    stdout = make_fifo(tmp_path, "stdout")
    client = FifoReader(stdout)
    before = open_fds()

    async def main() -> None:
        upstream = await Upstream.open("", stdout, "", True, namespace="ns", id="c1")
        boot = upstream.new_boot()
        assert boot.console_socket is not None
        socket_dir = os.path.dirname(boot.console_socket)
        with pytest.raises(FailedPrecondition, match="no pty master on console"):
            await boot.started(timeout=0.1)  # runc never connected
        assert not os.path.exists(socket_dir)
        upstream.close()

    asyncio.run(main())
    assert open_fds() == before
    client.close()
