"""Response bodies that stream container output: raw log bytes, and NDJSON for logs and exec.

Every body is produced as the runtime yields output, and each piece is sent before the next is
read. Litestar awaits the ASGI `send` of each piece, and uvicorn (0.55, h11 and httptools alike)
makes `send` wait while the client's socket buffer is full, so a slow client slows the reads
instead of filling memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from corebase.api.schemas import ExecEndLine, OutputLine
from corebase.errors import ApiError
from corebase.runtime.text import TextDecoder
from corebase.runtime.types import ExecExit, LogChunk, StreamName

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"

_encoder = msgspec.json.Encoder()


async def raw_output(chunks: AsyncIterator[LogChunk]) -> AsyncIterator[bytes]:
    """Yield the output bytes exactly as the container wrote them, both streams merged.

    When the engine fails after the response began, the body just ends there, and the server logs
    why; the NDJSON form says so in its last line instead.
    """
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk.data
    except ApiError as exc:
        logger.warning("log stream broke off: %s", exc)


async def ndjson_output(chunks: AsyncIterator[LogChunk]) -> AsyncIterator[bytes]:
    """Yield one OutputLine per piece of output, decoding each stream as UTF-8 across pieces.

    When the engine fails after the response began, the last line is {"error": <problem details>}.
    """
    lines = _OutputLines()
    error: dict | None = None
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if line := lines.line(chunk.stream, chunk.data):
                    yield line
    except ApiError as exc:
        logger.warning("log stream broke off: %s", exc)
        error = exc.to_problem()
    for line in lines.finish():
        yield line
    if error is not None:
        yield _encoder.encode({"error": error}) + b"\n"


async def ndjson_exec(items: AsyncIterator[LogChunk | ExecExit], started: float) -> AsyncIterator[bytes]:
    """Yield OutputLines, then one ExecEndLine with the exit code.

    `started` is the `time.perf_counter()` reading when the request began. An engine error after
    the response began cannot change its status any more, so it goes into the last line.
    """
    lines = _OutputLines()
    end = ExecExit(exit_code=None)
    error: dict | None = None
    try:
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, ExecExit):
                    end = item
                elif line := lines.line(item.stream, item.data):
                    yield line
    except ApiError as exc:
        logger.warning("streamed exec output broke off: %s", exc)
        error = exc.to_problem()

    for line in lines.finish():
        yield line
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    last = ExecEndLine(exit_code=end.exit_code, timed_out=end.timed_out, duration_ms=duration_ms, error=error)
    yield _encoder.encode(last) + b"\n"


class _OutputLines:
    """Turn pieces of output into encoded OutputLines, keeping a character cut between pieces whole."""

    def __init__(self) -> None:
        self._decoder = TextDecoder()

    def line(self, stream: StreamName, data: bytes) -> bytes | None:
        """Return the line for `data`, or None while it holds only part of a character."""
        text = self._decoder.decode(stream, data)
        return self._encode(stream, text) if text else None

    def finish(self) -> list[bytes]:
        """Return the lines for what the decoders still hold at the end: U+FFFD for a cut character."""
        lines = []
        for stream in ("stdout", "stderr"):
            if text := self._decoder.finish(stream):
                lines.append(self._encode(stream, text))
        return lines

    @staticmethod
    def _encode(stream: StreamName, text: str) -> bytes:
        return _encoder.encode(OutputLine(stream=stream, text=text)) + b"\n"
