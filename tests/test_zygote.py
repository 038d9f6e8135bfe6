"""The warm zygote: forks daemons on request, one per path, fresh code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebootshim import launch
from rebootshim.reaper import set_subreaper

SRC = str(Path(__file__).resolve().parent.parent / "src")


def wait_for_socket(path: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_socket():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "zygote"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "rebootshim.zygote", str(path)],
                            env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for_socket(path), "zygote did not come up"
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_zygote_forks_a_daemon_that_runs_the_given_arguments(
    zygote: Path,
) -> None:
    set_subreaper()  # the double-forked daemon is reparented to us
    listener = socket.socket(socket.AF_UNIX)
    try:
        # An unknown flag: the daemon's main() exits 2, which we can see.
        pid = launch.ask_zygote(str(zygote), ["-id", "x", "-nope"], [listener.fileno()])
    finally:
        listener.close()
    assert pid is not None and pid != os.getpid()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2


def test_a_second_zygote_for_the_same_path_exits_at_once(zygote: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-m", "rebootshim.zygote", str(zygote)],
                          env=env, timeout=20, check=False)  # fmt: skip
    assert done.returncode == 0
    assert zygote.is_socket()  # the first one still serves


def test_no_zygote_means_none_and_no_exception(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    try:
        assert (
            launch.ask_zygote(str(tmp_path / "absent"), ["-v"], [listener.fileno()])
            is None
        )
    finally:
        listener.close()


def test_the_zygote_path_changes_when_a_package_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(launch, "_PACKAGE", str(tmp_path))
    before = launch.zygote_path("/run/x", "/c.sock")
    os.utime(tmp_path / "a.py", ns=(1, 1))
    assert launch.zygote_path("/run/x", "/c.sock") != before
    assert before.startswith("/run/x/rebootshim-zygote-")


def test_each_containerd_gets_its_own_zygote() -> None:
    assert launch.zygote_path("/run/x", "/a.sock") != launch.zygote_path(
        "/run/x", "/b.sock"
    )


def test_the_zygote_runs_delete_on_the_callers_stdout_and_stderr(
    zygote: Path, tmp_path: Path
) -> None:
    from rebootshim.api.task import shim_pb2

    bundle = tmp_path / "state" / "task" / "ns" / "c1"
    bundle.mkdir(parents=True)
    (bundle / "init.pid").write_text("4242")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        args = ["-namespace", "ns", "-id", "c1", "-bundle", str(bundle), "delete"]
        pid = launch.ask_zygote(str(zygote), args, [out_w, err_w], mode="delete")
        os.close(out_w)
        os.close(err_w)
        assert pid is not None
        reply = shim_pb2.DeleteResponse.FromString(os.read(out_r, 4096))
    finally:
        os.close(out_r)
        os.close(err_r)
    assert (reply.pid, reply.exit_status) == (4242, 137)
    assert reply.exited_at.seconds > 0


def test_requests_round_trip_and_garbage_is_refused() -> None:
    from rebootshim.zygote import decode_request

    body = launch.encode_request("delete", ["-id", "a b", "delete"])[4:]
    request = decode_request(body)
    assert request["mode"] == "delete"
    assert request["args"] == ["-id", "a b", "delete"]
    assert request["cwd"] == os.getcwd()
    assert request["env"] == dict(os.environ)
    for bad in (b"", b"nope\0daemon\0/\x000", body.replace(b"delete", b"format", 1)):
        with pytest.raises(ValueError):
            decode_request(bad)


def test_a_request_its_client_gave_up_on_is_never_run(zygote: Path) -> None:
    # The client sends a request and closes before the handshake's GO:
    # the zygote must drop it (it used to fork it late, twice over).
    marker = zygote.parent / "ran"
    args = ["-namespace", "ns", "-id", "c1", "-bundle", str(marker), "delete"]
    out_r, out_w = os.pipe()
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(str(zygote))
        socket.send_fds(conn, [launch.encode_request("delete", args)], [out_w, out_w])
        conn.close()  # gone before READY/GO
        os.close(out_w)
        assert os.read(out_r, 100) == b""  # EOF: no delete ever wrote
    finally:
        os.close(out_r)


def test_a_silent_client_holds_the_zygote_only_briefly(zygote: Path) -> None:
    set_subreaper()  # the double-forked daemon is reparented to us
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(zygote))  # connects, never sends
    listener = socket.socket(socket.AF_UNIX)
    try:
        started = time.monotonic()
        pid = launch.ask_zygote(str(zygote), ["-id", "x", "-nope"], [listener.fileno()])
        assert pid is not None
        assert time.monotonic() - started < 3
    finally:
        idle.close()
        listener.close()
    os.waitpid(pid, 0)
