"""Sending calls with httpx: `SyncSession` for `Client`, `AsyncSession` for `AsyncClient`.

Both do the same three things, and all of it but the waiting lives in `corebase.client._call`:
send one call, stream a response of JSON lines, and walk the pages of a listing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import httpx

from corebase.client._call import (
    Call,
    build_request,
    connection_error,
    decode,
    next_page,
    problem_error,
    read_response,
)

T = TypeVar("T")


class SyncSession:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def send(self, call: Call[T]) -> T:
        request = build_request(self.http, call)
        try:
            if call.from_header is None:
                response = self.http.send(request)
            else:
                # Only the headers matter, and an error's problem body; a success's body is left unread.
                response = self.http.send(request, stream=True)
                try:
                    if not response.is_success:
                        response.read()
                finally:
                    response.close()
        except httpx.TransportError as exc:
            raise connection_error(exc, request) from exc
        return read_response(call, response)

    def stream(self, call: Call[T]) -> Iterator[T]:
        """Yield each line of a JSON-lines response, decoded into `call.returns`, as it arrives.

        With `returns=bytes`, yield the raw body in chunks instead.
        """
        request = build_request(self.http, call)
        try:
            response = self.http.send(request, stream=True)
            try:
                if not response.is_success:
                    response.read()
                    raise problem_error(response)
                if call.returns is bytes:
                    yield from response.iter_bytes()  # type: ignore[misc]
                    return
                for line in response.iter_lines():
                    if line:
                        yield decode(line.encode(), call.returns, response)
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise connection_error(exc, request) from exc

    def pages(self, call: Call[Any]) -> Iterator[Any]:
        """Yield the items of every page, from the call's offset to the end of the listing."""
        following: Call[Any] | None = call
        while following is not None:
            page = self.send(following)
            yield from page.items
            following = next_page(following, page)

    def close(self) -> None:
        self.http.close()


class AsyncSession:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, call: Call[T]) -> T:
        request = build_request(self.http, call)
        try:
            if call.from_header is None:
                response = await self.http.send(request)
            else:
                # Only the headers matter, and an error's problem body; a success's body is left unread.
                response = await self.http.send(request, stream=True)
                try:
                    if not response.is_success:
                        await response.aread()
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            raise connection_error(exc, request) from exc
        return read_response(call, response)

    async def stream(self, call: Call[T]) -> AsyncIterator[T]:
        """Yield each line of a JSON-lines response, decoded into `call.returns`, as it arrives.

        With `returns=bytes`, yield the raw body in chunks instead.
        """
        request = build_request(self.http, call)
        try:
            response = await self.http.send(request, stream=True)
            try:
                if not response.is_success:
                    await response.aread()
                    raise problem_error(response)
                if call.returns is bytes:
                    async for chunk in response.aiter_bytes():
                        yield chunk  # type: ignore[misc]
                    return
                async for line in response.aiter_lines():
                    if line:
                        yield decode(line.encode(), call.returns, response)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise connection_error(exc, request) from exc

    async def pages(self, call: Call[Any]) -> AsyncIterator[Any]:
        """Yield the items of every page, from the call's offset to the end of the listing."""
        following: Call[Any] | None = call
        while following is not None:
            page = await self.send(following)
            for item in page.items:
                yield item
            following = next_page(following, page)

    async def close(self) -> None:
        await self.http.aclose()
