"""An asyncio ttrpc client: concurrent unary calls over one unix connection.

Calls share the connection and use odd stream ids 1, 3, 5, ... as the Go
client does (containerd-shim-protocol.md 2.1).  A broken connection fails
the calls waiting on it with ConnectionError; the next call dials again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError, Message

from rebootshim.api.ttrpc import request_pb2
from rebootshim.ttrpc.codec import (
    MAX_DATA,
    MAX_STREAM_ID,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

logger = logging.getLogger(__name__)

RESOURCE_EXHAUSTED = 8
_READ_SIZE = 1 << 16

# What a call's future resolves to: the Response, or the error to raise.
# Errors travel as results so none is left unretrieved by a gone caller.
_Outcome = Message | BaseException


class RemoteError(Exception):
    """The server answered with a non-zero status ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class _Connection:
    """One dialled connection, its reader task and the calls awaiting it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writer = writer
        self._lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[_Outcome]] = {}
        self._next_id = 1
        self.is_broken = False
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    def __repr__(self) -> str:
        return (
            f"<ttrpc client connection next_id={self._next_id} "
            f"pending={len(self._pending)} broken={self.is_broken}>"
        )

    @property
    def is_usable(self) -> bool:
        return not self.is_broken and self._next_id <= MAX_STREAM_ID

    async def roundtrip(self, data: bytes) -> Message:
        """Send one Request body and wait for its Response."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        frame = encode_frame(stream_id, TYPE_REQUEST, data)
        # Registered before writing: the reply may come while we drain.
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            await self._send(frame)
            outcome = await future
        finally:
            self._pending.pop(stream_id, None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _send(self, frame: bytes) -> None:
        async with self._lock:
            if self.is_broken:
                raise ConnectionError("ttrpc connection closed")
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except OSError as exc:
                self._break()
                raise ConnectionError(f"ttrpc connection broken: {exc}") from exc

    async def close(self) -> None:
        self._break()
        await asyncio.wait([self._reader_task])

    def _break(self) -> None:
        """Mark broken, close the socket and fail every waiting call."""
        self.is_broken = True
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_result(ConnectionError("ttrpc connection closed"))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        try:
            while data := await reader.read(_READ_SIZE):
                for frame in decoder.feed(data):
                    self._deliver(frame)
        except OSError:
            pass  # reset by the peer: same as end of stream
        finally:
            self._break()

    def _deliver(self, frame: Frame | OversizedFrame) -> None:
        if isinstance(frame, Frame) and frame.msg_type != TYPE_RESPONSE:
            return
        future = self._pending.get(frame.stream_id)
        if future is None or future.done():
            # The caller gave up (timeout or cancel); ttrpc drops it too.
            logger.debug("dropped reply for an abandoned call")
            return
        future.set_result(_outcome(frame))


def _outcome(frame: Frame | OversizedFrame) -> _Outcome:
    if isinstance(frame, OversizedFrame):
        return RemoteError(
            RESOURCE_EXHAUSTED,
            f"message length {frame.length} exceed maximum message size of {MAX_DATA}",
        )
    try:
        response: Message = request_pb2.Response.FromString(frame.data)
    except DecodeError as exc:
        return exc
    return response


class Client:
    """A ttrpc client for the unix socket at ``path``, dialled lazily."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: _Connection | None = None
        self._dial_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<ttrpc Client path={self._path!r} conn={self._conn!r}>"

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[Message],
        timeout: float | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Message:
        """Call ``service/method``; raise RemoteError for a non-zero status.

        ``timeout`` bounds the whole call, dialling included, and is sent as
        timeout_nano; TimeoutError when it passes (a late reply is dropped).
        """
        body = _request(service, method, request, timeout, metadata)
        async with asyncio.timeout(timeout):
            conn = await self._connection()
            response: Any = await conn.roundtrip(body)
        if response.HasField("status") and response.status.code != 0:
            raise RemoteError(response.status.code, response.status.message)
        return response_type.FromString(response.payload)

    async def close(self) -> None:
        """Close the connection; calls waiting on it fail with ConnectionError.

        A later call() dials again.
        """
        async with self._dial_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> _Connection:
        async with self._dial_lock:
            if self._conn is None or not self._conn.is_usable:
                if self._conn is not None:
                    # Broken, or out of stream ids after 2**31 calls.
                    await self._conn.close()
                reader, writer = await asyncio.open_unix_connection(self._path)
                self._conn = _Connection(reader, writer)
            return self._conn


def _request(
    service: str,
    method: str,
    request: Message,
    timeout: float | None,
    metadata: Mapping[str, str] | None,
) -> bytes:
    message: Message = request_pb2.Request(
        service=service,
        method=method,
        payload=request.SerializeToString(),
        timeout_nano=0 if timeout is None else int(timeout * 1e9),
        metadata=[
            request_pb2.KeyValue(key=k, value=v) for k, v in (metadata or {}).items()
        ],
    )
    return message.SerializeToString()
