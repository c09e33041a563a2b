"""Resource classes, whose methods are written once and run on either client.

A method of a resource builds a `Call` and is decorated with `endpoint` or `stream`, and
`paged(list_method, Item)` turns a method that reads one page into one that walks all pages.
Looked up on a resource of `Client`, the method sends the call and returns the result. On a
resource of `AsyncClient`, it returns an awaitable, or an async iterator for `stream` and
`paged`. The overloads of `__get__` tell type checkers which one they get.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from corebase.client._call import Call
from corebase.client._session import AsyncSession, SyncSession

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", SyncSession, AsyncSession)


class Resource(Generic[S]):
    """A group of API methods, such as `containers`, bound to one client's session."""

    def __init__(self, session: S) -> None:
        self._session: S = session


class _Method(Generic[P, T]):
    # The session method that runs the built call: "send", "stream" or "pages".
    runner = ""
    __name__: str

    def __init__(self, build: Callable[Concatenate[Any, P], Any]) -> None:
        self._build = build
        self.__name__ = build.__name__
        self.__doc__ = build.__doc__

    def _bind(self, resource: Resource[Any]) -> Callable[..., Any]:
        build = self._build
        run = getattr(resource._session, self.runner)

        @functools.wraps(build)
        def method(*args: Any, **kwargs: Any) -> Any:
            return run(build(resource, *args, **kwargs))

        method.__doc__ = self.__doc__

        # help() and editors show the caller's signature: no `self`, and no Call as the result.
        signature = inspect.signature(build)
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:], return_annotation=inspect.Signature.empty
        )
        return method


class endpoint(_Method[P, T]):
    """Decorate a method that builds a Call[T]: it returns T on `Client`, an awaitable of T on `AsyncClient`."""

    runner = "send"

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        super().__init__(build)

    @overload
    def __get__(self, resource: None, owner: type) -> endpoint[P, T]: ...
    @overload
    def __get__(self, resource: Resource[SyncSession], owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, resource: Resource[AsyncSession], owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, resource: Resource[Any] | None, owner: type) -> Any:
        return self if resource is None else self._bind(resource)


class stream(_Method[P, T]):
    """Decorate a method that builds a Call[T] for a JSON-lines response: it returns an iterator of T."""

    runner = "stream"

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        super().__init__(build)

    @overload
    def __get__(self, resource: None, owner: type) -> stream[P, T]: ...
    @overload
    def __get__(self, resource: Resource[SyncSession], owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, resource: Resource[AsyncSession], owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, resource: Resource[Any] | None, owner: type) -> Any:
        return self if resource is None else self._bind(resource)


class paged(_Method[P, T]):
    """Make an iterator over the `item`s of every page that a page-reading `endpoint` returns.

    The iterator takes the endpoint's arguments. It requests `limit` items at a time, from
    `offset` on, until the listing's `total`.
    """

    runner = "pages"

    def __init__(self, page: endpoint[P, Any], item: type[T]) -> None:
        super().__init__(page._build)
        self.item = item
        self.__doc__ = (
            f"Iterate over every {item.__name__} that `{page.__name__}` would return, page by page.\n\n"
            f"It takes the arguments of `{page.__name__}`, and requests `limit` items at a time from `offset` on."
        )

    @overload
    def __get__(self, resource: None, owner: type) -> paged[P, T]: ...
    @overload
    def __get__(self, resource: Resource[SyncSession], owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, resource: Resource[AsyncSession], owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, resource: Resource[Any] | None, owner: type) -> Any:
        return self if resource is None else self._bind(resource)
