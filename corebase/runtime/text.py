"""UTF-8 decoding of container output that arrives in pieces, one decoder per stream.

A runtime passes output on as bytes, cut wherever the engine or the network cut it, so one
character may arrive in two pieces. Output is not guaranteed to be UTF-8 either. The API decodes
it here, before it puts text into JSON.
"""

from __future__ import annotations

import codecs

from corebase.runtime.types import StreamName


class TextDecoder:
    """Decode the bytes of stdout and stderr as UTF-8, one incremental decoder per stream.

    A character split between two pieces of one stream decodes whole; invalid bytes become
    U+FFFD and decoding goes on after them. `finish` flushes a stream, so an incomplete
    character at its end becomes U+FFFD.
    """

    def __init__(self) -> None:
        factory = codecs.getincrementaldecoder("utf-8")
        self._decoders = {"stdout": factory(errors="replace"), "stderr": factory(errors="replace")}

    def decode(self, stream: StreamName, data: bytes) -> str:
        """Return the text of `data` that is complete, keeping a trailing partial character."""
        return self._decoders[stream].decode(data)

    def finish(self, stream: StreamName) -> str:
        """Return what a stream still contains (U+FFFD for a partial character) and reset it."""
        return self._decoders[stream].decode(b"", final=True)
