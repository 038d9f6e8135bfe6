"""Task events to containerd: ordered, retried ttrpc Forward calls.

containerd-shim-protocol.md section 4.1: each event is an Envelope
(time, namespace, topic, Any) sent to ``Events/Forward`` on
``$TTRPC_ADDRESS``.  Like the Go shim's publisher, a failed Forward is
retried five times, 1 s, 2 s, ... 5 s apart, then dropped.  Unlike it,
retries hold back later events, so subscribers see create -> start ->
exit -> delete in order even across a containerd restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rebootshim.api.events import service_pb2
from rebootshim.ttrpc.client import Client, RemoteError

logger = logging.getLogger(__name__)

SERVICE = "containerd.services.events.ttrpc.v1.Events"
METHOD = "Forward"
NAMESPACE_KEY = "containerd-namespace-ttrpc"
RETRIES = 5
FORWARD_TIMEOUT = 5.0  # per attempt, as the Go publisher


class Publisher:
    """Queues events and sends them, one at a time, in publish order.

    ``retry_delay`` is the base of the back-off (attempt n waits n times
    it); tests shrink it.
    """

    def __init__(
        self, ttrpc_address: str, namespace: str, *, retry_delay: float = 1.0
    ) -> None:
        self._client = Client(ttrpc_address)
        self._namespace = namespace
        self._retry_delay = retry_delay
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._is_closed = False

    def __repr__(self) -> str:
        return (
            f"<Publisher namespace={self._namespace} queued={self._queue.qsize()} "
            f"closed={self._is_closed}>"
        )

    def publish(self, topic: str, event: Message) -> None:
        """Stamp the time and queue the event; never blocks, never raises.

        Call it from the event loop's thread.
        """
        if self._is_closed:
            logger.warning("dropped event published after close", extra=_ctx(topic))
            return
        try:
            self._enqueue(topic, event)
        except Exception as exc:
            # Losing one event must not fail the RPC or exit that caused it.
            logger.warning("failed to queue event", extra=_ctx(topic), exc_info=exc)

    async def close(self, timeout: float) -> None:
        """Send what is queued within ``timeout`` seconds, then stop."""
        self._is_closed = True
        sender = self._sender
        if sender is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._queue.join()
            except TimeoutError:
                # One is in flight, the rest still queued.
                unsent = self._queue.qsize() + 1
                logger.warning("dropped %d unsent events at close", unsent)
            sender.cancel()
            await asyncio.wait([sender])
        await self._client.close()

    def _enqueue(self, topic: str, event: Message) -> None:
        self._queue.put_nowait(self._forward_request(topic, event))
        if self._sender is None:
            # Started on first use, when a loop is surely running.
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    def _forward_request(self, topic: str, event: Message) -> Message:
        stamp = Timestamp()
        stamp.FromNanoseconds(time.time_ns())
        # Any.Pack() would prefix type.googleapis.com/, which containerd
        # 1.6 consumers cannot decode (protocol doc rule 6): set it bare.
        packed = AnyMessage(
            type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()
        )
        envelope = service_pb2.Envelope(
            timestamp=stamp, namespace=self._namespace, topic=topic, event=packed
        )
        request: Message = service_pb2.ForwardRequest(envelope=envelope)
        return request

    async def _send_all(self) -> None:
        while True:
            request = await self._queue.get()
            try:
                await self._send(request)
            finally:
                self._queue.task_done()

    async def _send(self, request: Any) -> None:
        """Forward one event: 1 + RETRIES attempts, then drop it."""
        topic = request.envelope.topic
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(attempt * self._retry_delay)
            try:
                await self._forward(request)
                return
            except Exception as exc:
                error = exc
                logger.debug("forward failed: %s", exc, extra=_ctx(topic))
        logger.warning(
            "dropped event after %d attempts: %s", RETRIES + 1, error, extra=_ctx(topic)
        )

    async def _forward(self, request: Message) -> None:
        metadata = {NAMESPACE_KEY: self._namespace}
        try:
            await self._client.call(
                SERVICE, METHOD, request, Empty, FORWARD_TIMEOUT, metadata=metadata
            )
        except RemoteError:
            raise  # containerd answered: the connection is fine
        except Exception:
            # Timed out or broken: dial afresh on the next attempt.
            await self._client.close()
            raise


def _ctx(topic: str) -> dict[str, Any]:
    """logfmt fields for a log call (see rebootshim.log)."""
    return {"ctx": {"topic": topic}}
