"""ttrpc framing, sans-IO: bytes in, frames out; no sockets, no await.

The wire format is containerd-shim-protocol.md section 2.1 (ttrpc
``channel.go``): a 10-byte big-endian header -- data length u32, stream
id u32, message type u8, flags u8 -- followed by the data.  Both ends
refuse data longer than ``MAX_DATA``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_DATA = 4 << 20
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3  # ttrpc 1.2 streaming; unary peers ignore it

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size
MAX_STREAM_ID = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame as it came off the wire."""

    stream_id: int
    msg_type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length exceeds MAX_DATA; its body was skipped.

    The peer is still in sync: the ttrpc server answers such a stream with
    ResourceExhausted and carries on.
    """

    stream_id: int
    length: int


def encode_frame(stream_id: int, msg_type: int, data: bytes, flags: int = 0) -> bytes:
    """Return the header and data of one frame.

    Raises ValueError for data over MAX_DATA, which the peer would discard.
    """
    if len(data) > MAX_DATA:
        raise ValueError(
            f"message length {len(data)} exceeds maximum message size of {MAX_DATA}"
        )
    return HEADER.pack(len(data), stream_id, msg_type, flags) + data


class FrameDecoder:
    """Turns a byte stream into frames, whatever the chunking.

    At most one header plus one body (<= MAX_DATA) is held; the body of
    an oversized frame is dropped as it arrives and never stored.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized body still to drop

    def __repr__(self) -> str:
        return f"<FrameDecoder buffered={len(self._buffer)} skip={self._skip}>"

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of their frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Take the next bytes; return the frames they complete, in order."""
        if self._skip:
            # Drop straight from the input so the body never reaches the
            # buffer (the buffer is empty whenever a skip is pending).
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data
        frames: list[Frame | OversizedFrame] = []
        while (frame := self._next_frame()) is not None:
            frames.append(frame)
        return frames

    def _next_frame(self) -> Frame | OversizedFrame | None:
        buffer = self._buffer
        if self._skip or len(buffer) < HEADER_LENGTH:
            return None
        length, stream_id, msg_type, flags = HEADER.unpack_from(buffer)
        if length > MAX_DATA:
            del buffer[:HEADER_LENGTH]
            self._skip_body(length)
            return OversizedFrame(stream_id, length)
        end = HEADER_LENGTH + length
        if len(buffer) < end:
            return None
        data = bytes(buffer[HEADER_LENGTH:end])
        del buffer[:end]
        return Frame(stream_id, msg_type, flags, data)

    def _skip_body(self, length: int) -> None:
        dropped = min(length, len(self._buffer))
        del self._buffer[:dropped]
        self._skip = length - dropped
