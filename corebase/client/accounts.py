"""`client.users` (admins only), `client.keys` and `client.quotas`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from corebase.api.quotas import QuotaRecord
from corebase.api.users import CreatedKeyRecord, KeyRecord, UserRecord
from corebase.client._call import Call, body, path, query
from corebase.client._resource import Resource, S, endpoint

Role = Literal["viewer", "developer", "admin"]


class Users(Resource[S]):
    @endpoint
    def get(self, name: str) -> Call[UserRecord]:
        return Call("GET", path("/api/users", name), UserRecord)

    @endpoint
    def create(self, name: str, *, role: Role = "developer") -> Call[UserRecord]:
        """Create a user; give it a key with `client.keys.create(..., user=name)`."""
        return Call("POST", "/api/users", UserRecord, body=body(name=name, role=role))

    @endpoint
    def update(self, name: str, *, role: Role | None = None, disabled: bool | None = None) -> Call[UserRecord]:
        """Change a user's role, or disable (True) or enable (False) the user; None keeps a value.

        A disabled user's keys stop working at once in the process that handles this request,
        and in other API processes within the server's auth.key_cache_seconds.
        """
        return Call("PATCH", path("/api/users", name), UserRecord, body=body(role=role, disabled=disabled))

    @endpoint
    def list(self) -> Call[list[UserRecord]]:
        return Call("GET", "/api/users", list[UserRecord])


class Keys(Resource[S]):
    @endpoint
    def get(self, key_id: str) -> Call[KeyRecord]:
        """Read an API key's record; the secret is never shown again after creation."""
        return Call("GET", path("/api/keys", key_id), KeyRecord)

    @endpoint
    def create(
        self,
        name: str,
        *,
        scopes: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: float | None = None,
        user: str | None = None,
    ) -> Call[CreatedKeyRecord]:
        """Create an API key; its `secret` is in this response only.

        `scopes` (read, write, admin) narrow the user's role. `expires_at` needs a time zone;
        `expires_in` is seconds from now. Only an admin may name another `user`.
        """
        fields = body(
            name=name,
            scopes=list(scopes) if scopes is not None else None,
            expires_at=expires_at,
            expires_in=expires_in,
            user=user,
        )
        return Call("POST", "/api/keys", CreatedKeyRecord, body=fields)

    @endpoint
    def revoke(self, key_id: str) -> Call[KeyRecord]:
        """Revoke an API key, which stops working at once in the process that handles this request."""
        return Call("DELETE", path("/api/keys", key_id), KeyRecord)

    @endpoint
    def list(self, *, user: str | None = None) -> Call[list[KeyRecord]]:
        """List the caller's keys; an admin gets every key, or one user's keys with `user`."""
        return Call("GET", "/api/keys", list[KeyRecord], params=query(user=user))


class Quotas(Resource[S]):
    @endpoint
    def me(self) -> Call[QuotaRecord]:
        """Read the caller's own limits and current usage."""
        return Call("GET", "/api/quotas/me", QuotaRecord)

    @endpoint
    def get(self, user: str) -> Call[QuotaRecord]:
        """Read a user's limits, overrides and usage (admin)."""
        return Call("GET", path("/api/quotas", user), QuotaRecord)

    @endpoint
    def set(
        self,
        user: str,
        *,
        max_containers: int | None = None,
        max_memory: int | str | None = None,
        max_cpus: float | None = None,
        max_container_memory: int | str | None = None,
        max_container_cpus: float | None = None,
    ) -> Call[QuotaRecord]:
        """Replace a user's overrides (admin); a limit left as None takes the configured default.

        Memory limits are bytes or strings such as "16g".
        """
        fields = body(
            max_containers=max_containers,
            max_memory=max_memory,
            max_cpus=max_cpus,
            max_container_memory=max_container_memory,
            max_container_cpus=max_container_cpus,
        )
        return Call("PUT", path("/api/quotas", user), QuotaRecord, body=fields)

    @endpoint
    def delete(self, user: str) -> Call[None]:
        """Remove a user's overrides, so the configured defaults apply (admin)."""
        return Call("DELETE", path("/api/quotas", user))

