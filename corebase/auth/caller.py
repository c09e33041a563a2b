"""The authenticated caller that every handler receives from one dependency."""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["admin", "developer", "viewer"]


class Caller(msgspec.Struct, frozen=True):
    """The sender of a request: the API key used, the user it belongs to and that user's role."""

    key_id: str
    user: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
