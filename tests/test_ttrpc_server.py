"""The ttrpc server and client, run against each other on a private socket.

Bad input is sent as raw frames through ``RawPeer``; each test runs its
own event loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from rebootshim import errors
from rebootshim.api.ttrpc import request_pb2
from rebootshim.ttrpc import Client, Method, RemoteError, Server
from rebootshim.ttrpc.codec import (
    MAX_DATA,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

SERVICE = "test.v1.Echo"


class Echo:
    """The service under test: echo, block until released, fail on demand."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = False
        self.server: Server | None = None

    async def echo(self, request: Message) -> Message:
        assert isinstance(request, StringValue)
        return StringValue(value=request.value.upper())

    async def block(self, request: Message) -> Message:
        self.started.set()
        await self.release.wait()
        self.finished = True
        return Empty()

    async def fail(self, request: Message) -> Message:
        assert isinstance(request, StringValue)
        kind = getattr(errors, request.value, None)
        if kind is None:
            raise RuntimeError("boom")
        raise kind(f"container c1 {request.value.lower()}")

    async def shutdown(self, request: Message) -> Message:
        assert self.server is not None
        await self.server.close()
        await asyncio.sleep(0.01)  # still running after close()
        self.finished = True
        return Empty()

    async def big(self, request: Message) -> Message:
        return BytesValue(value=bytes(MAX_DATA))

    def methods(self) -> dict[str, Method]:
        return {
            "Echo": (StringValue, self.echo),
            "Block": (Empty, self.block),
            "Fail": (StringValue, self.fail),
            "Big": (Empty, self.big),
            "Shutdown": (Empty, self.shutdown),
        }


@contextlib.asynccontextmanager
async def serving(
    echo: Echo, path: str | None = None
) -> AsyncIterator[tuple[Server, str]]:
    """A Server with ``echo`` registered, on ``path`` or in a tmp dir."""
    with tempfile.TemporaryDirectory(prefix="rs-ttrpc-") as tmp:
        path = path or os.path.join(tmp, "s.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        server = Server()
        server.register(SERVICE, echo.methods())
        echo.server = server
        serve_task = asyncio.create_task(server.serve(listener))
        try:
            yield server, path
        finally:
            await server.close()
            await serve_task
            os.unlink(path)


class RawPeer:
    """A client speaking raw frames, to send what Client never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, path: str) -> RawPeer:
        return cls(*await asyncio.open_unix_connection(path))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frames(self, count: int) -> list[Frame | OversizedFrame]:
        frames: list[Frame | OversizedFrame] = []
        async with asyncio.timeout(5):
            while len(frames) < count:
                frames += self.decoder.feed(await self.reader.read(1 << 16))
        return frames

    async def responses(self, count: int) -> list[tuple[int, Any]]:
        frames = await self.frames(count)
        return [(f.stream_id, _response(f)) for f in frames]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _response(frame: Frame | OversizedFrame) -> Any:
    assert isinstance(frame, Frame)
    assert frame.msg_type == TYPE_RESPONSE
    return request_pb2.Response.FromString(frame.data)


def request_frame(stream_id: int, method: str = "Echo", payload: bytes = b"") -> bytes:
    request = request_pb2.Request(service=SERVICE, method=method, payload=payload)
    return encode_frame(stream_id, TYPE_REQUEST, request.SerializeToString())


def run(test: Callable[[Echo, Server, str], Awaitable[None]]) -> None:
    async def main() -> None:
        echo = Echo()
        async with serving(echo) as (server, path):
            await test(echo, server, path)

    asyncio.run(main())


async def echo_call(client: Client, text: str = "hi") -> str:
    reply: Any = await client.call(
        SERVICE, "Echo", StringValue(value=text), StringValue
    )
    return str(reply.value)


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_call_returns_the_handler_reply() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        assert await echo_call(client, "hello") == "HELLO"
        await client.close()

    run(test)


def test_a_blocking_method_does_not_block_other_calls() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        blocked = asyncio.create_task(client.call(SERVICE, "Block", Empty(), Empty))
        await echo.started.wait()
        # Same connection, answered while Block is still running.
        replies = await asyncio.gather(*(echo_call(client, str(i)) for i in range(20)))
        assert replies == [str(i) for i in range(20)]
        assert not blocked.done()
        echo.release.set()
        assert await blocked == Empty()
        await client.close()

    run(test)


@pytest.mark.parametrize(
    "kind",
    [
        "NotFound",
        "AlreadyExists",
        "FailedPrecondition",
        "InvalidArgument",
        "Unimplemented",
        "Unavailable",
        "Internal",
        "ShimError",
    ],
)
def test_a_shim_error_answers_with_its_own_code_and_message(kind: str) -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        with pytest.raises(RemoteError) as caught:
            await client.call(SERVICE, "Fail", StringValue(value=kind), Empty)
        assert caught.value.code == getattr(errors, kind).code
        assert caught.value.message == f"container c1 {kind.lower()}"
        await client.close()

    run(test)


def test_an_unexpected_exception_answers_unknown_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        with pytest.raises(RemoteError) as caught:
            await client.call(SERVICE, "Fail", StringValue(value="boom"), Empty)
        assert (caught.value.code, caught.value.message) == (2, "boom")
        await client.close()

    with caplog.at_level(logging.DEBUG, logger="rebootshim"):
        run(test)
    errors_logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == 1
    assert getattr(errors_logged[0], "ctx", None) == {"method": f"{SERVICE}/Fail"}


async def expect_status(client: Client, service: str, method: str) -> tuple[int, str]:
    with pytest.raises(RemoteError) as caught:
        await client.call(service, method, StringValue(value="x"), Empty)
    return caught.value.code, caught.value.message


def test_an_unknown_service_answers_unimplemented() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        status = await expect_status(client, "test.v1.Nope", "Echo")
        assert status == (12, "service test.v1.Nope")
        await client.close()

    run(test)


def test_an_unknown_method_answers_unimplemented() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        assert await expect_status(client, SERVICE, "Nope") == (12, "method Nope")
        await client.close()

    run(test)


def test_an_undecodable_payload_answers_invalid_argument() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        # Valid bytes, but not UTF-8, so not a StringValue.
        with pytest.raises(RemoteError) as caught:
            await client.call(SERVICE, "Echo", BytesValue(value=b"\xff"), StringValue)
        assert caught.value.code == 3
        assert await echo_call(client) == "HI"
        await client.close()

    run(test)


def test_an_undecodable_request_answers_invalid_argument_and_serving_goes_on() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        peer.send(encode_frame(1, TYPE_REQUEST, b"\xff\xff\xff"))
        peer.send(request_frame(3, payload=StringValue(value="ok").SerializeToString()))
        (s1, bad), (s3, good) = sorted(await peer.responses(2), key=lambda r: r[0])
        assert (s1, bad.status.code) == (1, 3)
        assert (s3, good.HasField("status")) == (3, False)
        assert StringValue.FromString(good.payload).value == "OK"
        await peer.close()

    run(test)


def test_an_even_stream_id_answers_invalid_argument() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        peer.send(request_frame(2))
        [(stream_id, response)] = await peer.responses(1)
        assert stream_id == 2
        assert response.status.code == 3
        assert response.status.message == (
            "StreamID must be odd for client initiated streams"
        )
        await peer.close()

    run(test)


def test_an_oversized_frame_answers_resource_exhausted_and_serving_goes_on() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        length = MAX_DATA + 1
        header = length.to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x01\x00"
        peer.send(header + bytes(length) + request_frame(7))
        responses = dict(await peer.responses(2))
        assert responses[5].status.code == 8
        assert "exceed maximum message size" in responses[5].status.message
        assert not responses[7].HasField("status")
        await peer.close()

    run(test)


def test_a_reply_over_max_data_answers_resource_exhausted() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        assert (await expect_status(client, SERVICE, "Big"))[0] == 8
        await client.close()

    run(test)


def test_frames_that_are_not_requests_are_ignored() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        peer.send(encode_frame(1, TYPE_RESPONSE, b"\xff"))
        peer.send(encode_frame(1, TYPE_DATA, b"\xff"))
        peer.send(request_frame(3))
        [(stream_id, _)] = await peer.responses(1)
        assert stream_id == 3
        await peer.close()

    run(test)


def test_garbage_bytes_do_not_stop_the_server() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        peer.send(os.urandom(64 * 1024))
        await peer.close()
        client = Client(path)
        assert await echo_call(client) == "HI"
        await client.close()

    run(test)


def test_a_client_gone_mid_request_leaves_no_task_or_fd_behind() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        tasks, fds = other_tasks(), fd_count()
        client = Client(path)
        call = asyncio.create_task(client.call(SERVICE, "Block", Empty(), Empty))
        await echo.started.wait()
        await client.close()
        with pytest.raises(ConnectionError):
            await call
        # The handler may finish; its reply has nowhere to go.
        echo.release.set()
        await eventually(lambda: echo.finished and other_tasks() == tasks)
        assert fd_count() == fds

    run(test)


def test_a_new_connection_is_served_after_the_old_one_closed() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        for text in ("one", "two", "three"):
            client = Client(path)
            assert await echo_call(client, text) == text.upper()
            await client.close()

    run(test)


def test_close_stops_accepting_and_closes_connections() -> None:
    async def main() -> None:
        fds = fd_count()
        echo = Echo()
        async with serving(echo) as (server, path):
            client = Client(path)
            call = asyncio.create_task(client.call(SERVICE, "Block", Empty(), Empty))
            await echo.started.wait()
            await server.close()
            with pytest.raises(ConnectionError):
                await call
            with pytest.raises(OSError):
                await echo_call(client)
            await client.close()
        assert other_tasks() == set()
        assert fd_count() == fds

    asyncio.run(main())


def test_a_handler_may_close_the_server_it_runs_in() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        call = asyncio.create_task(client.call(SERVICE, "Shutdown", Empty(), Empty))
        # Its own connection closes under it, so the reply may be lost.
        with contextlib.suppress(ConnectionError):
            await call
        await eventually(lambda: echo.finished)
        with pytest.raises(OSError):
            await echo_call(client)
        await client.close()

    run(test)


async def fake_server(
    path: str, handle: Callable[[RawPeer], Coroutine[Any, Any, None]]
) -> asyncio.Server:
    """A raw-frame server, to see exactly what the client sends."""

    async def accept(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = RawPeer(reader, writer)
        try:
            await handle(peer)
        finally:
            await peer.close()

    return await asyncio.start_unix_server(accept, path)


def test_the_client_sends_odd_stream_ids_timeout_and_metadata() -> None:
    seen: list[tuple[int, Any]] = []

    async def handle(peer: RawPeer) -> None:
        reply = request_pb2.Response().SerializeToString()
        while len(seen) < 3:
            for frame in await peer.frames(1):  # one or more
                assert isinstance(frame, Frame)
                request = request_pb2.Request.FromString(frame.data)
                seen.append((frame.stream_id, request))
                peer.send(encode_frame(frame.stream_id, TYPE_RESPONSE, reply))

    async def main(path: str) -> None:
        server = await fake_server(path, handle)
        client = Client(path)
        meta = {"containerd-namespace-ttrpc": "k8s.io"}
        await client.call("s", "M", Empty(), Empty, timeout=2.5, metadata=meta)
        await asyncio.gather(*(client.call("s", "M", Empty(), Empty) for _ in "ab"))
        await client.close()
        server.close()
        await server.wait_closed()

    with tempfile.TemporaryDirectory(prefix="rs-ttrpc-") as tmp:
        asyncio.run(main(os.path.join(tmp, "s.sock")))
    assert [stream_id for stream_id, _ in seen] == [1, 3, 5]
    first = seen[0][1]
    assert first.timeout_nano == 2_500_000_000
    assert [(kv.key, kv.value) for kv in first.metadata] == [
        ("containerd-namespace-ttrpc", "k8s.io")
    ]
    assert seen[1][1].timeout_nano == 0


def test_a_call_past_its_timeout_raises_and_the_late_reply_is_dropped() -> None:
    async def test(echo: Echo, server: Server, path: str) -> None:
        client = Client(path)
        with pytest.raises(TimeoutError):
            await client.call(SERVICE, "Block", Empty(), Empty, timeout=0.05)
        echo.release.set()
        await eventually(lambda: echo.finished)
        assert await echo_call(client) == "HI"
        await client.close()

    run(test)


def test_the_client_redials_on_the_next_call_after_the_server_restarted() -> None:
    async def main(path: str) -> None:
        client = Client(path)
        for _ in range(2):
            echo = Echo()
            async with serving(echo, path):
                assert await echo_call(client) == "HI"
                call = asyncio.create_task(
                    client.call(SERVICE, "Block", Empty(), Empty)
                )
                await echo.started.wait()
            # The server went away under a pending call: it fails, no hang.
            with pytest.raises(ConnectionError):
                await call
        await client.close()

    with tempfile.TemporaryDirectory(prefix="rs-ttrpc-") as tmp:
        asyncio.run(main(os.path.join(tmp, "s.sock")))


def test_a_peer_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer is us; make the server believe it runs as someone else.
    monkeypatch.setattr("rebootshim.ttrpc.server.os.geteuid", lambda: 12345)

    async def main() -> bytes:
        server = Server()
        server.register("svc", {})
        listener = socket.socket(socket.AF_UNIX)
        path = str(tmp_path / "s.sock")
        listener.bind(path)
        listener.listen()
        serving = asyncio.create_task(server.serve(listener))
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            got = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
            return got
        finally:
            await server.close()
            serving.cancel()

    assert asyncio.run(main()) == b""  # closed without a word


def test_past_the_in_flight_bound_the_server_stops_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rebootshim.ttrpc.server.MAX_IN_FLIGHT", 4)

    async def test(echo: Echo, server: Server, path: str) -> None:
        peer = await RawPeer.connect(path)
        for stream_id in range(1, 20, 2):  # ten blocking requests
            peer.send(request_frame(stream_id, "Block"))
        await echo.started.wait()
        await asyncio.sleep(0.1)
        assert len(server._requests) == 4  # the rest wait unread
        echo.release.set()
        assert len(await peer.responses(10)) == 10
        await peer.close()

    run(test)
