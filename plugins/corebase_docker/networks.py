"""Bridge networks for container owners: created on first use, joined and left by containers."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import aiodocker

from corebase.errors import EngineError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubnetPool:
    """The IPv4 range owner networks take their subnets from, and the prefix length of each subnet."""

    network: ipaddress.IPv4Network
    size: int

    def candidates(self, taken: list[ipaddress._BaseNetwork]) -> Iterator[str]:
        """Yield the pool's subnets that overlap no network in `taken`, lowest first."""
        for subnet in self.network.subnets(new_prefix=self.size):
            if not any(subnet.overlaps(other) for other in taken if other.version == 4):
                yield str(subnet)


# The bridge driver's option that turns traffic between the network's containers on or off.
ICC_OPTION = "com.docker.network.bridge.enable_icc"

# Subnets tried before giving up when other processes keep taking the free ones first.
SUBNET_ATTEMPTS = 8


async def ensure_network(
    docker: aiodocker.Docker, name: str, labels: dict[str, str], pool: SubnetPool | None = None, *, isolated: bool = False
) -> None:
    """Create the bridge network `name` unless it exists with exactly these labels.

    A network of that name without the labels was made outside CoreBase, so it is not used: its
    other members could reach the owner's containers. The engine (20.10 at least) can create two
    networks of one name when two requests race, so every caller keeps the oldest one and removes
    the others, which makes the name unambiguous again. With a `pool`, the network gets the pool's
    first subnet that no engine network uses; without one, the engine picks from its default pools.
    An `isolated` network is created with inter-container traffic turned off, which the engine
    enforces with iptables.
    """
    matches = await _named(docker, name)
    if not matches:
        await _create(docker, name, labels, pool, isolated)
        matches = await _named(docker, name)

    for network in matches:
        _check_labels(name, network, labels)
    kept = min(matches, key=lambda network: (network.get("Created", ""), network["Id"]))
    for network in matches:
        if network is not kept:
            await _remove_duplicate(docker, network)


async def network_ready(docker: aiodocker.Docker, name: str, labels: dict[str, str]) -> bool:
    """Tell, with one engine call, whether exactly one network `name` exists and carries `labels`.

    False means `ensure_network` has work to do: the network is missing, or the engine returns 400
    because two networks share the name. Raises EngineError for a network CoreBase did not create.
    """
    try:
        network = await docker._query_json(f"networks/{name}")
    except aiodocker.DockerError as exc:
        if exc.status in (400, 404):
            return False
        raise
    # The engine also matches an id prefix, so only an exact name counts.
    if network.get("Name") != name:
        return False
    _check_labels(name, network, labels)
    return True


async def _create(
    docker: aiodocker.Docker, name: str, labels: dict[str, str], pool: SubnetPool | None, isolated: bool
) -> None:
    data: dict = {"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Labels": labels}
    if isolated:
        data["Options"] = {ICC_OPTION: "false"}
    subnets: Iterator[str | None] = iter([None])
    if pool is not None:
        subnets = pool.candidates(await _subnets_in_use(docker))
    for attempt, subnet in enumerate(subnets):
        if subnet is not None:
            data["IPAM"] = {"Driver": "default", "Config": [{"Subnet": subnet}]}
        try:
            await docker._query_json("networks/create", "POST", data=data)
            logger.info("created network %s (subnet %s) for owner %s", name, subnet or "from the engine", labels.get("corebase.owner"))
            return
        except aiodocker.DockerError as exc:
            # 409: another request created it first, which serves as well.
            if exc.status == 409:
                return
            # Another process took this subnet since the list was read: try the next one.
            if subnet is None or "overlap" not in str(exc.message).lower() or attempt + 1 >= SUBNET_ATTEMPTS:
                raise
    if pool is not None:
        raise EngineError(
            f"cannot create network {name!r}: every /{pool.size} subnet of networks.subnet_pool {pool.network} is in use; "
            "widen networks.subnet_pool, or use a larger networks.subnet_size for smaller subnets"
        )


async def _subnets_in_use(docker: aiodocker.Docker) -> list[ipaddress._BaseNetwork]:
    """Return the subnets of every engine network, CoreBase's or not."""
    taken = []
    for network in await docker._query_json("networks"):
        for config in (network.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, TypeError):
                taken.append(ipaddress.ip_network(config.get("Subnet"), strict=False))
    return taken


def _check_labels(name: str, network: dict, labels: dict[str, str]) -> None:
    found = network.get("Labels") or {}
    if any(found.get(key) != value for key, value in labels.items()):
        raise EngineError(
            f"the engine has a network named {name!r} that CoreBase did not create (labels {found}); "
            "remove or rename it, or set networks.prefix to another value"
        )


async def _named(docker: aiodocker.Docker, name: str) -> list[dict]:
    """Return the networks named exactly `name`; the engine's name filter also matches parts of names."""
    networks = await docker._query_json("networks", params={"filters": json.dumps({"name": [name]})})
    return [network for network in networks if network.get("Name") == name]


async def _remove_duplicate(docker: aiodocker.Docker, network: dict) -> None:
    try:
        async with docker._query(f"networks/{network['Id']}", method="DELETE"):
            pass
        logger.info("removed duplicate network %s (%s)", network["Name"], network["Id"][:12])
    except aiodocker.DockerError as exc:
        # 404: another caller removed it first. 403: a container joined it before it could go.
        logger.warning("could not remove duplicate network %s (%s): %s", network["Name"], network["Id"][:12], exc)


async def connect_network(docker: aiodocker.Docker, engine_id: str, name: str) -> None:
    await docker._query_json(f"networks/{name}/connect", "POST", data={"Container": engine_id})


async def disconnect_network(docker: aiodocker.Docker, engine_id: str, name: str) -> None:
    try:
        await docker._query_json(f"networks/{name}/disconnect", "POST", data={"Container": engine_id, "Force": True})
    except aiodocker.DockerError as exc:
        # The engine returns 403 "is not connected to network" for a container that is not attached.
        if exc.status == 403 and "not connected" in exc.message:
            return
        raise
