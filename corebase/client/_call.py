"""The request and response layer that the sync and the async client share.

A resource method builds a `Call`: the HTTP request and the type its response decodes into.
A session sends it with httpx. Every step that does not wait on the network is a function here:
building the request, choosing the timeout, decoding the body, mapping a problem to an exception
and finding the next page. So the two clients differ only in `await`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from corebase.client.errors import ApiError, ConnectionFailed, RequestTimedOut, UnexpectedResponse, error_class

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, and the type its JSON response decodes into.

    `returns` is None for a response without a body. `wait` is the seconds the server may work
    on the request beyond the client's read timeout, such as an exec's own timeout. None lifts
    the read timeout, for requests whose length the server bounds, such as a start that pulls an
    image or a followed log. `ok_statuses` lists error statuses whose body still decodes into
    `returns`, such as the 503 of a degraded /health.

    `content` is a raw request body of type `content_type` instead of a JSON `body`: bytes, or
    a local file's Path, which is sent in chunks. `returns=bytes` makes a streamed call yield
    the raw body in chunks. With `from_header`, the response's JSON comes from that header and a
    successful response's body is never read, while an error's problem details still are (a HEAD
    request would lose them, as its responses have no body).
    """

    method: str
    path: str
    returns: Any = None
    params: Mapping[str, Any] | None = None
    body: Any = None
    headers: Mapping[str, str] | None = None
    wait: float | None = 0.0
    ok_statuses: frozenset[int] = frozenset()
    content: bytes | Path | None = None
    content_type: str | None = None
    from_header: str | None = None

    def with_params(self, **params: Any) -> Call[T]:
        return dataclasses.replace(self, params={**(self.params or {}), **params})


def body(**fields: Any) -> dict[str, Any]:
    """Build a JSON object from keyword arguments: snake_case names become camelCase, and None values are left out."""
    return {_camel(name): value for name, value in fields.items() if value is not None}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def path(prefix: str, *names: str) -> str:
    """Append each name to `prefix` as one path segment, so a name with "/" or "?" cannot change the route."""
    if not all(names):
        raise ValueError(f"an empty id or name cannot follow {prefix}; pass the id or name of an existing object")
    return "/".join([prefix, *(quote(name, safe="") for name in names)])


def query(**params: Any) -> dict[str, Any]:
    """Build query parameters like `body`; booleans become true/false and times RFC 3339."""
    values = {}
    for name, value in body(**params).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, datetime):
            value = value.isoformat()
        values[name] = value
    return values


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    headers = dict(call.headers or {})
    content: Any = None
    if call.body is not None:
        content = _encoder.encode(call.body)
        headers["content-type"] = "application/json"
    elif call.content is not None:
        content, length = _raw_content(call.content, asynchronous=isinstance(http, httpx.AsyncClient))
        headers["content-type"] = call.content_type or "application/octet-stream"
        headers["content-length"] = str(length)
    return http.build_request(
        call.method, call.path, params=call.params, content=content, headers=headers, timeout=_timeout(http.timeout, call)
    )


# Bytes read from a local file per chunk of an upload.
CHUNK_SIZE = 256 * 1024


def _raw_content(content: bytes | Path, *, asynchronous: bool) -> tuple[Any, int]:
    """Return a raw body for httpx and its length; a file is read in chunks as it is sent.

    The length goes into Content-Length, which CoreBase's uploads need, so httpx does not send
    the chunks with chunked transfer encoding.
    """
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content), len(content)
    if not isinstance(content, os.PathLike):
        raise TypeError(f"an upload is bytes or a pathlib.Path of a local file, not {type(content).__name__}")
    size = Path(content).stat().st_size
    return (_file_chunks_async(Path(content)) if asynchronous else _file_chunks(Path(content))), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


async def _file_chunks_async(path: Path) -> AsyncIterator[bytes]:
    # A local file reads fast enough that the event loop does not notice these blocking reads.
    for chunk in _file_chunks(path):
        yield chunk


def _timeout(default: httpx.Timeout, call: Call[Any]) -> httpx.Timeout:
    if call.wait is None or default.read is None:
        read = None
    else:
        read = default.read + call.wait
    return httpx.Timeout(connect=default.connect, read=read, write=default.write, pool=default.pool)


def read_response(call: Call[T], response: httpx.Response) -> T:
    """Decode a complete response into `call.returns`, or raise the ApiError its problem details describe."""
    if not (response.is_success or response.status_code in call.ok_statuses):
        raise problem_error(response)
    if call.returns is None:
        return None  # type: ignore[return-value]
    if call.from_header is not None:
        return decode(response.headers.get(call.from_header, "").encode(), call.returns, response)
    return decode(response.content, call.returns, response)


def decode(content: bytes, returns: Any, response: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(content, type=returns)
    except msgspec.DecodeError as exc:
        raise UnexpectedResponse(
            f"{response.request.method} {response.request.url} returned a body the client cannot read as "
            f"{getattr(returns, '__name__', returns)}: {exc}; check that the URL points at a CoreBase server "
            "of the same version as this client",
            response.status_code,
        ) from None


def problem_error(response: httpx.Response) -> ApiError:
    """Build the ApiError for an error response; its body must have been read."""
    try:
        problem = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        problem = None
    if not isinstance(problem, dict):
        # A proxy or load balancer in front of CoreBase returns errors without problem details.
        excerpt = response.text[:200].strip() or "an empty body"
        problem = {
            "title": response.reason_phrase,
            "status": response.status_code,
            "detail": f"{response.request.method} {response.request.url} returned {excerpt}",
        }
    cls = error_class(response.status_code, problem.get("type"))
    return cls(response.status_code, problem, retry_after=_retry_after(response, problem))


def _retry_after(response: httpx.Response, problem: Mapping[str, Any]) -> float | None:
    value = response.headers.get("retry-after") or problem.get("retryAfter")
    try:
        return float(value) if value is not None else None
    except ValueError:
        # An HTTP date instead of seconds; CoreBase itself always sends seconds.
        return None


def connection_error(exc: httpx.TransportError, request: httpx.Request) -> ConnectionFailed:
    """Describe a transport failure with the URL and what to check."""
    url = str(request.url)
    server = f"{request.url.scheme}://{request.url.netloc.decode()}"
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimedOut(
            f"{request.method} {url} timed out ({type(exc).__name__}); the server may be overloaded, "
            "or pass a longer timeout to the client",
            url,
        )
    if isinstance(exc, httpx.ConnectError):
        return ConnectionFailed(
            f"cannot connect to CoreBase at {server}: {exc or type(exc).__name__}; check the URL and that "
            "`corebase serve` is running there",
            url,
        )
    return ConnectionFailed(f"{request.method} {url} failed: {exc or type(exc).__name__}", url)


def next_page(call: Call[Any], page: Any) -> Call[Any] | None:
    """Return the call for the page after `page`, or None when `page` was the last one."""
    following = page.offset + len(page.items)
    if not page.items or following >= page.total:
        return None
    return call.with_params(offset=following)
