"""Start request validation and the hardened spec it produces (no engine needed)."""

from __future__ import annotations

import pytest

from corebase.api.schemas import MountRequest, StartRequest
from corebase.containers.spec import ENGINE_MIN_MEMORY, build_spec
from corebase.errors import InvalidField
from corebase.settings import load_settings

SETTINGS = load_settings(environ={})


def spec_for(**fields):
    request = StartRequest(**{"image": "corebase-test/busybox:1", **fields})
    return build_spec(request, SETTINGS, container_id="ctr_0123456789abcdef", owner="alice", engine_cpus=2)


def field_error(**fields) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        spec_for(**fields)
    return caught.value


def test_hardened_defaults():
    spec = spec_for()
    assert spec.memory == 512 * 1024 * 1024
    assert spec.nano_cpus == 1_000_000_000
    assert spec.pids_limit == 512
    assert spec.cap_drop == ["ALL"]
    assert spec.cap_add == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"]
    assert spec.security_opt == ["no-new-privileges:true"]
    assert spec.privileged is False
    assert spec.init is False


def test_init_setting_reaches_spec():
    settings = load_settings(environ={"COREBASE_CONTAINERS_INIT": "true"})
    request = StartRequest(image="corebase-test/busybox:1")

    spec = build_spec(request, settings, container_id="ctr_0123456789abcdef", owner="alice", engine_cpus=2)

    assert spec.init is True


def test_labels_identify_the_container():
    spec = spec_for(project_id="web", labels={"team": "blue"})
    assert spec.labels == {
        "team": "blue",
        "corebase.id": "ctr_0123456789abcdef",
        "corebase.owner": "alice",
        "corebase.managed": "true",
        "corebase.project": "web",
    }
    assert spec.name == "cb-0123456789abcdef"


def test_ports_bind_to_loopback():
    spec = spec_for(ports={"3000": 8080, "53/udp": None})
    assert [(p.container_port, p.protocol, p.host_ip, p.host_port) for p in spec.ports] == [
        (3000, "tcp", "127.0.0.1", 8080),
        (53, "udp", "127.0.0.1", None),
    ]


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("512m", 512 * 1024**2), ("2g", 2 * 1024**3), ("1.5g", int(1.5 * 1024**3)), (ENGINE_MIN_MEMORY, ENGINE_MIN_MEMORY), ("64MiB", 64 * 1024**2)],
)
def test_memory_forms(memory, expected):
    assert spec_for(memory=memory).memory == expected


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"memory": 512}, "memory", 'write "512m"'),
        ({"memory": "5m"}, "memory", "below the engine minimum of 6 MiB"),
        ({"memory": "lots"}, "memory", "not a size"),
        ({"memory": "-5m"}, "memory", "not a size"),
        ({"memory": "100g"}, "memory", "above the maximum"),
        ({"cpus": 0}, "cpus", "above 0"),
        ({"cpus": -1.0}, "cpus", "above 0"),
        ({"cpus": 0.001}, "cpus", "engine minimum"),
        ({"cpus": 3.0}, "cpus", "above the maximum of 2"),
        ({"name": "-bad"}, "name", "starting with a letter or digit"),
        ({"name": "a" * 129}, "name", "1 to 128"),
        ({"name": "has space"}, "name", "invalid"),
        ({"image": ""}, "image", "not a valid image reference"),
        ({"image": "UPPER/case"}, "image", "not a valid image reference"),
        ({"image": "busybox:tag with space"}, "image", "not a valid image reference"),
        ({"project_id": "a/b"}, "projectId", "invalid"),
        ({"env": {"A=B": "1"}}, "env.A=B", "without '='"),
        ({"env": {"": "1"}}, "env.", "non-empty"),
        ({"labels": {"corebase.owner": "mallory"}}, "labels.corebase.owner", "set by CoreBase"),
        ({"labels": {"CoreBase.Managed": "x"}}, "labels.CoreBase.Managed", "set by CoreBase"),
        ({"ports": {"http": 80}}, "ports.http", "container port"),
        ({"ports": {"70000": 80}}, "ports.70000", "container port"),
        ({"ports": {"80": 70000}}, "ports.80", "host port"),
        ({"ports": {"80/icmp": 1}}, "ports.80/icmp", "container port"),
        ({"mounts": [MountRequest(type="tmpfs", target="relative")]}, "mounts[0].target", "absolute path"),
        ({"mounts": [MountRequest(type="volume", target="/data")]}, "mounts[0].source", "needs a source"),
        ({"volumes": ["a:b:c:d"]}, "volumes[0]", "invalid"),
        ({"volumes": ["data:relative"]}, "volumes[0]", "absolute path"),
    ],
)
def test_invalid_fields_are_named(fields, field, text):
    error = field_error(**fields)
    assert error.field == field
    assert text in error.detail
    assert error.status == 422


@pytest.mark.parametrize(
    "image",
    ["busybox", "busybox:1.36", "127.0.0.1:5055/corebase-test/busybox:abc", "ghcr.io/org/app@sha256:" + "a" * 64, "a/b/c:1.0-rc_1"],
)
def test_valid_image_references(image):
    assert spec_for(image=image).image == image


@pytest.mark.parametrize(
    ("volume", "kind", "source", "read_only"),
    [
        ("/var/run/docker.sock:/sock", "bind", "/var/run/docker.sock", False),
        ("./code:/code:ro", "bind", "./code", True),
        ("~/x:/x", "bind", "~/x", False),
        ("cache:/cache", "volume", "cache", False),
        ("/anon", "volume", None, False),
    ],
)
def test_volume_syntax(volume, kind, source, read_only):
    (mount,) = spec_for(volumes=[volume]).mounts
    assert (mount.type, mount.source, mount.read_only) == (kind, source, read_only)
