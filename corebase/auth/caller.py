"""The authenticated caller that every handler receives from one dependency."""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["admin", "developer", "viewer"]


class Caller(msgspec.Struct, frozen=True):
    """The sender of a request: the API key used, the user it belongs to, that user's role and the key's scopes."""

    key_id: str
    user: str
    role: Role
    # The key's own scopes; empty means everything the role allows (see corebase.auth.access).
    scopes: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
