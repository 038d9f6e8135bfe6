"""An asyncio ttrpc server for unary services (containerd-shim-protocol.md 2).

Each request runs as its own task, because containerd sends Wait, Kill and
State over one connection at once; replies go out in completion order on
the request's stream id.  Errors become a wire status here and only here:
a ShimError carries its own ``code``, anything else is Unknown.

No server-side deadline is applied: ``timeout_nano`` is read by nobody, as
the shim's handlers either finish promptly or (Wait) must not be cut short.
When a client goes away mid-request the handler still runs to its end and
its reply is dropped; nothing on the wire cancels a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from google.protobuf.message import DecodeError, Message

from rebootshim.api.rpc import status_pb2
from rebootshim.api.ttrpc import request_pb2
from rebootshim.errors import ShimError
from rebootshim.ttrpc.codec import (
    MAX_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

Handler = Callable[[Message], Awaitable[Message]]
Method = tuple[type[Message], Handler]

logger = logging.getLogger(__name__)

# gRPC status codes (google.rpc.Code) the dispatcher itself answers with.
UNKNOWN = 2
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12

_READ_SIZE = 1 << 16
# Requests one connection may have in flight (each Wait holds one).
MAX_IN_FLIGHT = 4096
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class _Connection:
    """One client connection: its writer and the lock that orders replies."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        self.is_closed = False

    def __repr__(self) -> str:
        sock = self._writer.get_extra_info("socket")
        fd = -1 if sock is None else sock.fileno()
        return f"<ttrpc connection fd={fd} closed={self.is_closed}>"

    async def reply(self, stream_id: int, data: bytes) -> None:
        """Send one serialized Response; dropped once the client has gone."""
        frame = encode_frame(stream_id, TYPE_RESPONSE, data)
        async with self._lock:
            if self.is_closed:
                logger.debug("dropped reply to a closed connection")
                return
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except OSError:
                # The reader loop sees the same failure and cleans up.
                self.close()

    def close(self) -> None:
        self.is_closed = True
        self._writer.close()


class Server:
    """Serves the registered services on any number of unix listeners."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Method]] = {}
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._readers: set[asyncio.Task[Any]] = set()  # one per connection
        self._requests: set[asyncio.Task[Any]] = set()  # one per request
        self._closed = asyncio.Event()

    def register(self, service: str, methods: Mapping[str, Method]) -> None:
        """Add (or extend) a service: method -> (request type, handler)."""
        self._services.setdefault(service, {}).update(methods)

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections on the listening ``listener`` until close()."""
        server = await asyncio.start_unix_server(self._accept, sock=listener)
        self._servers.append(server)
        try:
            await self._closed.wait()
        finally:
            server.close()  # also when the serving task is cancelled

    async def close(self) -> None:
        """Stop accepting, close every connection and cancel running requests.

        Returns once they have all ended.  A handler that calls close() is
        not cancelled: that would cancel close()'s own caller.
        """
        self._closed.set()
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.close()  # its reader loop then ends at end of stream
        current = asyncio.current_task()
        for task in self._requests - {current}:
            task.cancel()
        tasks = (self._requests | self._readers) - {current}
        if tasks:
            await asyncio.wait(tasks)
        for server in self._servers:
            await server.wait_closed()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closed.is_set() or not _is_same_user(writer):
            writer.close()
            return
        conn = _Connection(writer)
        self._connections.add(conn)
        _track(self._readers, asyncio.current_task())
        try:
            await self._read_loop(reader, conn)
        finally:
            self._connections.discard(conn)
            conn.close()

    async def _read_loop(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        decoder = FrameDecoder()
        # Back-pressure: past this many requests in flight on one
        # connection, stop reading (the peer's writes then block) instead
        # of holding a task per pipelined frame without bound.
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError:  # ECONNRESET: the client is gone
                return
            if not data or conn.is_closed:
                return  # closed by close(): start nothing new
            for frame in decoder.feed(data):
                await slots.acquire()
                self._spawn(self._handle_in_slot(conn, frame, slots))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        _track(self._requests, asyncio.create_task(coro))

    async def _handle_in_slot(
        self, conn: _Connection, frame: Frame | OversizedFrame, slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._handle(conn, frame)
        finally:
            slots.release()

    async def _handle(self, conn: _Connection, frame: Frame | OversizedFrame) -> None:
        if isinstance(frame, OversizedFrame):
            # Like ttrpc 1.1: the body was discarded, the stream gets 8.
            response = _error(
                RESOURCE_EXHAUSTED,
                f"message length {frame.length} exceed maximum message size "
                f"of {MAX_DATA}",
            )
        elif frame.msg_type != TYPE_REQUEST:
            return  # ignored for compatibility with later frame types
        elif frame.stream_id % 2 != 1:
            response = _error(
                INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"
            )
        else:
            response = await self._dispatch(frame.data)
        data = response.SerializeToString()
        if len(data) > MAX_DATA:
            data = _error(
                RESOURCE_EXHAUSTED,
                f"response length {len(data)} exceeds maximum message size "
                f"of {MAX_DATA}",
            ).SerializeToString()
        await conn.reply(frame.stream_id, data)

    async def _dispatch(self, data: bytes) -> Message:
        """Decode a Request, run its handler, and build the Response."""
        try:
            request = request_pb2.Request.FromString(data)
        except DecodeError as exc:
            return _error(INVALID_ARGUMENT, f"unmarshal request error: {exc}")
        name = f"{request.service}/{request.method}"
        methods = self._services.get(request.service)
        if methods is None:
            return _error(UNIMPLEMENTED, f"service {request.service}")
        if request.method not in methods:
            return _error(UNIMPLEMENTED, f"method {request.method}")
        request_type, handler = methods[request.method]
        try:
            message = request_type.FromString(request.payload)
        except DecodeError as exc:
            return _error(INVALID_ARGUMENT, f"failed to decode {name} request: {exc}")
        return await _call(name, handler, message)


def _is_same_user(writer: asyncio.StreamWriter) -> bool:
    """The Go server's UnixSocketRequireSameUser: only a peer with our own
    uid and gid may call (SO_PEERCRED; ttrpc unixcreds_linux.go)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _, uid, gid = _UCRED.unpack(creds)
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return True
    logger.warning("refused a connection from uid %d gid %d", uid, gid)
    return False


def _track(tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any] | None) -> None:
    """Hold the task until done: the event loop keeps only a weak ref."""
    if task is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _call(name: str, handler: Handler, message: Message) -> Message:
    """Run one handler; its error, whatever it is, becomes a status."""
    try:
        payload = (await handler(message)).SerializeToString()
    except ShimError as exc:
        return _error(exc.code, str(exc))
    except Exception as exc:
        # A bug or an unexpected OSError: the one place it is logged.
        # ``ctx`` carries logfmt fields (see rebootshim.log).
        logger.error("request failed", extra={"ctx": {"method": name}}, exc_info=exc)
        return _error(UNKNOWN, str(exc) or type(exc).__name__)
    # Success leaves status unset, as the Go server does.
    return request_pb2.Response(payload=payload)


def _error(code: int, message: str) -> Message:
    status = status_pb2.Status(code=code, message=message)
    response: Message = request_pb2.Response(status=status)
    return response
