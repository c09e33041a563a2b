"""The bridge networks CoreBase creates, one per owner, so one tenant's containers cannot reach another's.

The engine isolates user-defined bridge networks from each other, so containers on different owners'
networks cannot connect, while containers of one owner reach each other by address or name.
"""

from __future__ import annotations

import hashlib
import re

from corebase.settings import Settings

LABEL_NETWORK_OWNER = "corebase.owner"
# Owner of pool members not yet claimed; no API key can have an empty user name.
POOL_OWNER = ""
LABEL_NETWORK_MANAGED = "corebase.managed"
# Network mode of a container with no network interface besides loopback.
NO_NETWORK = "none"
# Runs of characters that cannot appear in a network name; each becomes one "-".
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
_OWNER_PART_LENGTH = 32


def owner_network(owner: str, settings: Settings) -> str | None:
    """Return the name of `owner`'s network, or None when per-owner networks are turned off.

    The name carries a hash of the exact owner name, so owners whose names differ only in case or
    in characters that cannot appear in a network name still get different networks.
    """
    if not settings.networks.per_owner:
        return None
    if owner == POOL_OWNER:
        # Idle members of every pool wait on this network, which passes no traffic between its
        # containers (see `network_isolated`). An owner's network name ends in hex digits, so
        # this one cannot clash with any.
        return f"{settings.networks.prefix}-pool-isolated"
    readable = _UNSAFE.sub("-", owner.lower()).strip("-.")[:_OWNER_PART_LENGTH] or "owner"
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"{settings.networks.prefix}-{readable}-{digest}"


def network_isolated(owner: str) -> bool:
    """Tell whether `owner`'s network keeps its containers from reaching each other.

    Only the pool network does: a claimed member is handed out once it joined its owner's network,
    and leaves the pool network after the response, while it can reach no idle member there.
    """
    return owner == POOL_OWNER


def network_labels(owner: str) -> dict[str, str]:
    """Return the labels of an owner's network, by which CoreBase and operators recognise it."""
    return {LABEL_NETWORK_MANAGED: "true", LABEL_NETWORK_OWNER: owner}
