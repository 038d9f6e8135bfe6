"""The event Publisher against a fake containerd Events service.

The fake is our own ttrpc Server on a socket in a private tmp dir; it can
be told to fail the first N Forward calls, or every call for one topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from rebootshim.api.events import service_pb2, task_pb2
from rebootshim.api.ttrpc import request_pb2
from rebootshim.errors import Unavailable
from rebootshim.events import NAMESPACE_KEY, SERVICE, Publisher
from rebootshim.ttrpc.codec import TYPE_RESPONSE, Frame, FrameDecoder, encode_frame
from rebootshim.ttrpc.server import Server

DELAY = 0.01  # retry base: delays of 10, 20, ... 50 ms


class FakeEvents:
    """Records forwarded envelopes; fails on demand with Unavailable."""

    def __init__(self, fail_first: int = 0, fail_topic: str = "") -> None:
        self.fail_first = fail_first
        self.fail_topic = fail_topic
        self.attempts: list[str] = []
        self.envelopes: list[Any] = []
        self.received = asyncio.Event()

    async def forward(self, request: Message) -> Message:
        envelope: Any = request.envelope  # type: ignore[attr-defined]
        self.attempts.append(envelope.topic)
        if len(self.attempts) <= self.fail_first or envelope.topic == self.fail_topic:
            raise Unavailable("events exchange not ready")
        self.envelopes.append(envelope)
        self.received.set()
        return Empty()

    @property
    def topics(self) -> list[str]:
        return [e.topic for e in self.envelopes]


@contextlib.contextmanager
def socket_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rs-events-") as tmp:
        yield os.path.join(tmp, "containerd.sock.ttrpc")


@contextlib.asynccontextmanager
async def containerd(fake: FakeEvents, path: str) -> AsyncIterator[None]:
    """Serve ``fake`` as containerd's Events service on ``path``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    server = Server()
    server.register(SERVICE, {"Forward": (service_pb2.ForwardRequest, fake.forward)})
    serving = asyncio.create_task(server.serve(listener))
    try:
        yield
    finally:
        await server.close()
        await serving
        os.unlink(path)


def exit_event(pid: int) -> Message:
    return task_pb2.TaskExit(container_id="c1", id="c1", pid=pid, exit_status=137)


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_events_arrive_in_publish_order_and_close_leaves_no_task() -> None:
    fake = FakeEvents()

    async def main(path: str) -> None:
        async with containerd(fake, path):
            tasks = other_tasks()
            publisher = Publisher(path, "default", retry_delay=DELAY)
            for pid in range(50):
                publisher.publish(f"/tasks/{pid}", exit_event(pid))
            await publisher.close(timeout=5)
            assert other_tasks() == tasks

    with socket_path() as path:
        asyncio.run(main(path))
    assert fake.topics == [f"/tasks/{pid}" for pid in range(50)]


def test_the_envelope_holds_the_bare_type_url_namespace_and_event() -> None:
    fake = FakeEvents()

    async def main(path: str) -> None:
        async with containerd(fake, path):
            publisher = Publisher(path, "k8s.io", retry_delay=DELAY)
            publisher.publish("/tasks/exit", exit_event(42))
            await publisher.close(timeout=5)

    with socket_path() as path:
        asyncio.run(main(path))
    [envelope] = fake.envelopes
    assert (envelope.namespace, envelope.topic) == ("k8s.io", "/tasks/exit")
    # Bare, with no type.googleapis.com/ prefix (protocol doc rule 6).
    assert envelope.event.type_url == "containerd.events.TaskExit"
    assert task_pb2.TaskExit.FromString(envelope.event.value) == exit_event(42)


def test_the_timestamp_is_taken_at_publish_not_at_delivery() -> None:
    fake = FakeEvents(fail_first=2)

    async def main(path: str) -> tuple[int, int]:
        async with containerd(fake, path):
            publisher = Publisher(path, "default", retry_delay=0.1)
            before = time.time_ns()
            publisher.publish("/tasks/exit", exit_event(1))
            after = time.time_ns()
            await publisher.close(timeout=5)
        return before, after

    with socket_path() as path:
        before, after = asyncio.run(main(path))
    # Delivered about 300 ms later, on the third attempt.
    assert len(fake.attempts) == 3
    assert before <= fake.envelopes[0].timestamp.ToNanoseconds() <= after


def test_a_failed_forward_is_retried_and_later_events_wait_for_it() -> None:
    fake = FakeEvents(fail_first=3)

    async def main(path: str) -> None:
        async with containerd(fake, path):
            publisher = Publisher(path, "default", retry_delay=DELAY)
            publisher.publish("/tasks/start", exit_event(1))
            publisher.publish("/tasks/exit", exit_event(1))
            await publisher.close(timeout=5)

    with socket_path() as path:
        asyncio.run(main(path))
    assert fake.attempts == ["/tasks/start"] * 4 + ["/tasks/exit"]
    assert fake.topics == ["/tasks/start", "/tasks/exit"]


def test_an_event_is_dropped_after_five_retries_and_the_next_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeEvents(fail_topic="/tasks/bad")

    async def main(path: str) -> float:
        async with containerd(fake, path):
            publisher = Publisher(path, "default", retry_delay=DELAY)
            start = time.monotonic()
            publisher.publish("/tasks/bad", exit_event(1))
            publisher.publish("/tasks/good", exit_event(2))
            await fake.received.wait()
            elapsed = time.monotonic() - start
            await publisher.close(timeout=5)
        return elapsed

    with socket_path() as path, caplog.at_level(logging.WARNING):
        elapsed = asyncio.run(main(path))
    assert fake.attempts == ["/tasks/bad"] * 6 + ["/tasks/good"]
    assert fake.topics == ["/tasks/good"]
    assert elapsed >= 15 * DELAY  # waited 1 + 2 + 3 + 4 + 5 delay units
    [warning] = caplog.records
    assert warning.getMessage().startswith("dropped event after 6 attempts")
    assert getattr(warning, "ctx", None) == {"topic": "/tasks/bad"}


def test_the_publisher_redials_when_containerd_comes_back() -> None:
    first, second = FakeEvents(), FakeEvents()

    async def main(path: str) -> None:
        publisher = Publisher(path, "default", retry_delay=0.05)
        async with containerd(first, path):
            publisher.publish("/tasks/start", exit_event(1))
            await first.received.wait()
        # containerd is down: this one is retried until it is back.
        publisher.publish("/tasks/exit", exit_event(1))
        await asyncio.sleep(0.08)
        async with containerd(second, path):
            await publisher.close(timeout=5)

    with socket_path() as path:
        asyncio.run(main(path))
    assert first.topics == ["/tasks/start"]
    assert second.topics == ["/tasks/exit"]


def test_publish_neither_blocks_nor_raises_without_containerd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main(path: str) -> None:
        publisher = Publisher(path, "default")  # the real 1 s back-off
        start = time.monotonic()
        for pid in range(3):
            publisher.publish("/tasks/exit", exit_event(pid))
        assert time.monotonic() - start < 0.1
        await publisher.close(timeout=0.2)
        assert time.monotonic() - start < 1
        publisher.publish("/tasks/exit", exit_event(9))  # after close
        assert other_tasks() == set()

    with socket_path() as path, caplog.at_level(logging.WARNING):
        asyncio.run(main(path))
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 3 unsent events at close",
        "dropped event published after close",
    ]


def test_forward_calls_carry_the_namespace_metadata() -> None:
    seen: list[Any] = []

    async def accept(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        frames: list[Any] = []
        while not frames:
            frames = FrameDecoder().feed(await reader.read(1 << 16))
        [frame] = frames
        assert isinstance(frame, Frame)
        seen.append(request_pb2.Request.FromString(frame.data))
        reply = request_pb2.Response().SerializeToString()
        writer.write(encode_frame(frame.stream_id, TYPE_RESPONSE, reply))
        writer.close()
        await writer.wait_closed()

    async def main(path: str) -> None:
        server = await asyncio.start_unix_server(accept, path)
        publisher = Publisher(path, "moby")
        publisher.publish("/tasks/exit", exit_event(1))
        await publisher.close(timeout=5)
        server.close()
        await server.wait_closed()

    with socket_path() as path:
        asyncio.run(main(path))
    [request] = seen
    assert (request.service, request.method) == (SERVICE, "Forward")
    assert [(kv.key, kv.value) for kv in request.metadata] == [(NAMESPACE_KEY, "moby")]
