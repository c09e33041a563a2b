"""Incremental decoding of the engine's multiplexed output stream.

Without a TTY the engine sends a container's (or an exec's) stdout and stderr over one connection
as frames: an 8-byte header (stream byte, three zero bytes, big-endian uint32 payload length),
then the payload. The stream byte is 0 for stdin, 1 for stdout, 2 for stderr and 3 for an error
message from the engine itself. Network chunks split headers and payloads at any byte, so the
decoder keeps state between `feed` calls.
"""

from __future__ import annotations

import struct

from corebase.runtime.types import StreamName

HEADER = struct.Struct(">BxxxL")

# The engine's own error messages (stream 3) are reported on stderr; stdin echoes count as stdout.
STREAM_NAMES: dict[int, StreamName] = {0: "stdout", 1: "stdout", 2: "stderr", 3: "stderr"}


class FrameError(ValueError):
    """The input is not a multiplexed stream: a header names an unknown stream."""


class FrameDecoder:
    """Split a multiplexed byte stream into (stream, payload) pieces as bytes arrive.

    `feed` returns the payload bytes that are complete so far, without waiting for the end of a
    frame, so a long frame is passed on piece by piece. Adjacent pieces of the same stream within
    one `feed` call are joined. Concatenating every piece of a stream gives its exact bytes.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream: StreamName = "stdout"
        self._remaining = 0

    @property
    def inside_frame(self) -> bool:
        """True when a header or payload has started but not ended, as after a cut connection."""
        return bool(self._header) or self._remaining > 0

    def feed(self, chunk: bytes) -> list[tuple[StreamName, bytes]]:
        """Decode `chunk` and return the payload pieces it completes, in order.

        Raises FrameError when a header names a stream other than 0 to 3.
        """
        pieces: list[tuple[StreamName, bytes]] = []
        view = memoryview(chunk)
        position = 0

        while position < len(view):
            if self._remaining == 0:
                needed = HEADER.size - len(self._header)
                self._header += view[position : position + needed]
                position += min(needed, len(view) - position)
                if len(self._header) < HEADER.size:
                    break
                self._start_frame()
                continue

            end = min(position + self._remaining, len(view))
            self._append(pieces, self._stream, bytes(view[position:end]))
            self._remaining -= end - position
            position = end

        return pieces

    def _start_frame(self) -> None:
        stream_byte, length = HEADER.unpack(self._header)
        self._header.clear()
        if stream_byte not in STREAM_NAMES:
            raise FrameError(
                f"unknown stream {stream_byte} in a multiplexed frame header; "
                "the output is probably from a TTY and is not multiplexed"
            )
        self._stream = STREAM_NAMES[stream_byte]
        self._remaining = length

    @staticmethod
    def _append(pieces: list[tuple[StreamName, bytes]], stream: StreamName, data: bytes) -> None:
        if pieces and pieces[-1][0] == stream:
            pieces[-1] = (stream, pieces[-1][1] + data)
        else:
            pieces.append((stream, data))

