"""The ttrpc frame codec, driven with byte strings alone."""

from __future__ import annotations

import dataclasses

import pytest

from rebootshim.ttrpc.codec import (
    MAX_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

REQUEST = encode_frame(1, TYPE_REQUEST, b"hello")
RESPONSE = encode_frame(1, TYPE_RESPONSE, b"", flags=4)


def header(length: int, stream_id: int, msg_type: int = TYPE_REQUEST) -> bytes:
    return (
        length.to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes([msg_type, 0])
    )


def test_encode_frame_writes_a_big_endian_header_before_the_data() -> None:
    # The header seen on the wire in containerd-shim-protocol.md 2.1.
    frame = encode_frame(5, TYPE_RESPONSE, b"x" * 0xDE)
    assert frame[:10] == bytes.fromhex("000000de 00000005 02 00")
    assert frame[10:] == b"x" * 0xDE


def test_encode_frame_refuses_data_over_max_data() -> None:
    encode_frame(1, TYPE_REQUEST, bytes(MAX_DATA))
    with pytest.raises(ValueError, match="exceeds maximum message size"):
        encode_frame(1, TYPE_REQUEST, bytes(MAX_DATA + 1))


def test_a_frame_split_at_every_byte_boundary_decodes_once() -> None:
    stream = REQUEST + RESPONSE
    expected = [
        Frame(1, TYPE_REQUEST, 0, b"hello"),
        Frame(1, TYPE_RESPONSE, 4, b""),
    ]
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames == expected, cut
        assert decoder.buffered == 0


def test_a_stream_fed_one_byte_at_a_time_decodes_in_order() -> None:
    decoder = FrameDecoder()
    frames: list[Frame | OversizedFrame] = []
    for byte in REQUEST + RESPONSE + REQUEST:
        frames += decoder.feed(bytes([byte]))
    assert frames == [
        Frame(1, TYPE_REQUEST, 0, b"hello"),
        Frame(1, TYPE_RESPONSE, 4, b""),
        Frame(1, TYPE_REQUEST, 0, b"hello"),
    ]


def test_several_frames_in_one_chunk_come_out_in_arrival_order() -> None:
    chunk = b"".join(encode_frame(i, TYPE_REQUEST, bytes([i])) for i in (1, 3, 5, 7))
    frames = FrameDecoder().feed(chunk + REQUEST[:4])
    assert frames == [Frame(i, TYPE_REQUEST, 0, bytes([i])) for i in (1, 3, 5, 7)]


def test_an_incomplete_frame_is_held_until_its_last_byte() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(REQUEST[:-1]) == []
    assert decoder.buffered == len(REQUEST) - 1
    assert decoder.feed(REQUEST[-1:]) == [Frame(1, TYPE_REQUEST, 0, b"hello")]


def test_a_frame_of_exactly_max_data_is_accepted() -> None:
    data = b"\x01" * MAX_DATA
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(3, TYPE_REQUEST, data))
    assert frames == [Frame(3, TYPE_REQUEST, 0, data)]


def test_an_oversized_frame_is_reported_once_and_the_next_frame_decodes() -> None:
    decoder = FrameDecoder()
    stream = header(MAX_DATA + 1, 7) + bytes(MAX_DATA + 1) + REQUEST
    assert decoder.feed(stream) == [
        OversizedFrame(7, MAX_DATA + 1),
        Frame(1, TYPE_REQUEST, 0, b"hello"),
    ]
    assert decoder.buffered == 0


def test_an_oversized_body_is_skipped_as_it_arrives_not_buffered() -> None:
    decoder = FrameDecoder()
    length = 3 * MAX_DATA
    assert decoder.feed(header(length, 9)[:3]) == []
    assert decoder.feed(header(length, 9)[3:] + b"\0" * 100) == [
        OversizedFrame(9, length)
    ]
    chunk = bytes(1 << 20)
    for _ in range(length // len(chunk) - 1):
        assert decoder.feed(chunk) == []
        assert decoder.buffered == 0
    # The last chunk ends the body 100 bytes early (sent with the header),
    # then a good frame follows in the same chunk.
    assert decoder.feed(chunk[100:] + REQUEST) == [Frame(1, TYPE_REQUEST, 0, b"hello")]


def test_an_empty_feed_returns_no_frames() -> None:
    assert FrameDecoder().feed(b"") == []


def test_frames_are_frozen_records() -> None:
    frame = Frame(1, TYPE_REQUEST, 0, b"")
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.stream_id = 3  # type: ignore[misc]
    assert not hasattr(frame, "__dict__")
