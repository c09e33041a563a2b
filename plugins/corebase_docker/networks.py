"""Bridge networks for container owners: created on first use, joined and left by containers."""

from __future__ import annotations

import json
import logging

import aiodocker

from corebase.errors import EngineError

logger = logging.getLogger(__name__)


async def ensure_network(docker: aiodocker.Docker, name: str, labels: dict[str, str]) -> None:
    """Create the bridge network `name` unless it exists with exactly these labels.

    A network of that name without the labels was made outside CoreBase, so it is not used: its
    other members could reach the owner's containers. The engine (20.10 at least) can create two
    networks of one name when two requests race, so every caller keeps the oldest one and removes
    the others, which makes the name unambiguous again.
    """
    matches = await _named(docker, name)
    if not matches:
        try:
            await docker._query_json(
                "networks/create",
                "POST",
                data={"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Labels": labels},
            )
            logger.info("created network %s for owner %s", name, labels.get("corebase.owner"))
        except aiodocker.DockerError as exc:
            # 409: another request created it first, which serves as well.
            if exc.status != 409:
                raise
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
