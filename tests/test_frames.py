"""Decoding of the engine's multiplexed stream and of UTF-8 split across chunks, on made-up and recorded output."""

from __future__ import annotations

import struct

import pytest

from corebase.runtime.text import TextDecoder
from corebase_docker.frames import FrameDecoder, FrameError
from support.frames_recording import (
    CONTAINER_RECORDING,
    EXEC_RECORDING,
    EXPECTED_BYTES,
    record_container,
    record_exec,
)

STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


# A recorded exec of `sh -c 'echo out; echo err >&2; exit 3'` on Engine 20.10, then more frames.
RECORDED = (
    frame(STDOUT, b"out\n")
    + frame(STDERR, b"err\n")
    + frame(STDOUT, "héllo ✓\n".encode())
    + frame(STDERR, b"")
    + frame(STDERR, b"x" * 300)
    + frame(STDOUT, b"end\n")
)


def joined(pieces: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Merge adjacent pieces of the same stream, to compare sequences regardless of chunking."""
    merged: list[tuple[str, bytes]] = []
    for stream, data in pieces:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + data)
        else:
            merged.append((stream, data))
    return merged


def feed_in_chunks(data: bytes, size: int) -> list[tuple[str, bytes]]:
    decoder = FrameDecoder()
    pieces = []
    for start in range(0, len(data), size):
        pieces.extend(decoder.feed(data[start : start + size]))
    assert not decoder.inside_frame
    return pieces


EXPECTED = [
    ("stdout", b"out\n"),
    ("stderr", b"err\n"),
    ("stdout", "héllo ✓\n".encode()),
    ("stderr", b"x" * 300),
    ("stdout", b"end\n"),
]


def test_whole_stream_in_one_chunk() -> None:
    assert FrameDecoder().feed(RECORDED) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 13, 64, 1000])
def test_stream_in_chunks_of_any_size(size: int) -> None:
    assert joined(feed_in_chunks(RECORDED, size)) == EXPECTED


def test_every_split_point() -> None:
    for cut in range(len(RECORDED) + 1):
        decoder = FrameDecoder()
        pieces = decoder.feed(RECORDED[:cut]) + decoder.feed(RECORDED[cut:])
        assert joined(pieces) == EXPECTED, f"split at byte {cut}"


def test_header_split_mid_way() -> None:
    data = frame(STDERR, b"payload")
    decoder = FrameDecoder()

    assert decoder.feed(data[:3]) == []
    assert decoder.inside_frame
    assert decoder.feed(data[3:6]) == []
    assert decoder.feed(data[6:]) == [("stderr", b"payload")]
    assert not decoder.inside_frame


def test_payload_passed_on_before_frame_ends() -> None:
    data = frame(STDOUT, b"0123456789")
    decoder = FrameDecoder()

    assert decoder.feed(data[:12]) == [("stdout", b"0123")]
    assert decoder.inside_frame
    assert decoder.feed(data[12:]) == [("stdout", b"456789")]
    assert not decoder.inside_frame


def test_adjacent_frames_of_one_stream_joined() -> None:
    data = frame(STDOUT, b"a") + frame(STDOUT, b"b") + frame(STDERR, b"c")

    assert FrameDecoder().feed(data) == [("stdout", b"ab"), ("stderr", b"c")]


def test_interleaved_streams_keep_order() -> None:
    data = b"".join(frame(STDOUT if i % 2 == 0 else STDERR, str(i).encode()) for i in range(6))

    assert FrameDecoder().feed(data) == [
        ("stdout", b"0"),
        ("stderr", b"1"),
        ("stdout", b"2"),
        ("stderr", b"3"),
        ("stdout", b"4"),
        ("stderr", b"5"),
    ]


def test_stdin_and_engine_error_streams() -> None:
    data = frame(STDIN, b"echo") + frame(SYSTEMERR, b"engine error")

    assert FrameDecoder().feed(data) == [("stdout", b"echo"), ("stderr", b"engine error")]


def test_empty_frames_yield_nothing() -> None:
    decoder = FrameDecoder()

    assert decoder.feed(frame(STDOUT, b"") + frame(STDERR, b"")) == []
    assert not decoder.inside_frame


def test_unknown_stream_byte_rejected() -> None:
    with pytest.raises(FrameError, match="unknown stream 7"):
        FrameDecoder().feed(frame(7, b"x"))


def test_raw_tty_output_rejected() -> None:
    # TTY output has no headers; its first byte ("h" = 104) is not a stream number.
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"hello world\r\n")


def test_cut_stream_reports_inside_frame() -> None:
    decoder = FrameDecoder()

    decoder.feed(frame(STDOUT, b"abcdef")[:10])

    assert decoder.inside_frame


# --- text --------------------------------------------------------------------------------------


def decode_bytewise(text_decoder: TextDecoder, stream: str, data: bytes) -> str:
    return "".join(text_decoder.decode(stream, data[i : i + 1]) for i in range(len(data)))


@pytest.mark.parametrize("text", ["é", "✓", "😀", "naïve café ✓ 😀 end"])
def test_multibyte_characters_split_bytewise(text: str) -> None:
    decoder = TextDecoder()

    decoded = decode_bytewise(decoder, "stdout", text.encode()) + decoder.finish("stdout")

    assert decoded == text


def test_partial_character_held_back() -> None:
    decoder = TextDecoder()

    assert decoder.decode("stdout", b"a\xe2\x9c") == "a"
    assert decoder.decode("stdout", b"\x93b") == "✓b"


def test_invalid_bytes_become_replacement_character() -> None:
    decoder = TextDecoder()

    decoded = decoder.decode("stderr", b"ok \xff\xfe done") + decoder.finish("stderr")

    assert decoded == "ok \ufffd\ufffd done"


def test_incomplete_character_at_end_replaced() -> None:
    decoder = TextDecoder()

    assert decoder.decode("stdout", b"end \xe2\x9c") == "end "
    assert decoder.finish("stdout") == "\ufffd"


def test_streams_decode_independently() -> None:
    decoder = TextDecoder()

    assert decoder.decode("stdout", b"\xc3") == ""
    assert decoder.decode("stderr", b"\xe2\x9c") == ""
    assert decoder.decode("stdout", b"\xa9") == "é"
    assert decoder.decode("stderr", b"\x93") == "✓"


def test_frames_and_text_together_bytewise() -> None:
    # A character split across two frames of the same stream, with a stderr frame in between.
    data = frame(STDOUT, b"caf\xc3") + frame(STDERR, "✓".encode()) + frame(STDOUT, b"\xa9!")
    frames = FrameDecoder()
    text = TextDecoder()
    output = {"stdout": "", "stderr": ""}

    for i in range(len(data)):
        for stream, payload in frames.feed(data[i : i + 1]):
            output[stream] += text.decode(stream, payload)
    for stream in output:
        output[stream] += text.finish(stream)

    assert output == {"stdout": "café!", "stderr": "✓"}


# --- recorded engine output --------------------------------------------------------------------
# tests/support/frames_recording.py wrote these files from a real container and a real exec.

RECORDINGS = {"container": CONTAINER_RECORDING, "exec": EXEC_RECORDING}

EXPECTED_TEXT = {
    "stdout": "plain ascii\ncafé\nbad \ufffd\ufffd bytes\nemoji 😀\nno newline \ufffd",
    "stderr": "check ✓ done\ncut \ufffd after\n",
}


def frame_payloads(data: bytes) -> list[tuple[int, bytes]]:
    """Split a whole multiplexed stream into (stream byte, payload), without FrameDecoder."""
    frames = []
    position = 0
    while position < len(data):
        stream, length = struct.unpack(">BxxxL", data[position : position + 8])
        frames.append((stream, data[position + 8 : position + 8 + length]))
        position += 8 + length
    return frames


def decode_recording_bytewise(data: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """Feed `data` to FrameDecoder and TextDecoder one byte at a time; return each stream's bytes and text."""
    frames = FrameDecoder()
    text = TextDecoder()
    raw = {"stdout": b"", "stderr": b""}
    decoded = {"stdout": "", "stderr": ""}

    for i in range(len(data)):
        for stream, payload in frames.feed(data[i : i + 1]):
            raw[stream] += payload
            decoded[stream] += text.decode(stream, payload)
    assert not frames.inside_frame
    for stream in decoded:
        decoded[stream] += text.finish(stream)
    return raw, decoded


@pytest.mark.parametrize("source", RECORDINGS)
def test_recording_decoded_bytewise(source: str) -> None:
    raw, decoded = decode_recording_bytewise(RECORDINGS[source].read_bytes())

    assert raw["stdout"] == EXPECTED_BYTES["stdout"]
    assert raw["stderr"] == EXPECTED_BYTES["stderr"]
    assert decoded["stdout"] == EXPECTED_TEXT["stdout"]
    assert decoded["stderr"] == EXPECTED_TEXT["stderr"]


@pytest.mark.parametrize("source", RECORDINGS)
def test_recording_at_every_split_point(source: str) -> None:
    data = RECORDINGS[source].read_bytes()

    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        streams = {"stdout": b"", "stderr": b""}
        for stream, payload in decoder.feed(data[:cut]) + decoder.feed(data[cut:]):
            streams[stream] += payload
        assert streams == EXPECTED_BYTES, f"split at byte {cut}"


@pytest.mark.parametrize("source", RECORDINGS)
def test_recording_cuts_characters_between_frames(source: str) -> None:
    # The recordings are only worth testing on if the engine really framed a character in two.
    frames = frame_payloads(RECORDINGS[source].read_bytes())
    cut = [payload for _, payload in frames if payload.endswith((b"caf\xc3", b"check \xe2\x9c", b"emoji \xf0\x9f"))]

    assert len(cut) == 3
    assert {stream for stream, _ in frames} == {STDOUT, STDERR}


@pytest.mark.engine
@pytest.mark.parametrize("source", RECORDINGS)
async def test_fresh_recording_decodes_the_same(source: str, docker, test_image: str) -> None:
    record = record_container if source == "container" else record_exec

    raw, decoded = decode_recording_bytewise(await record(docker, test_image))

    assert raw == EXPECTED_BYTES
    assert decoded == EXPECTED_TEXT
