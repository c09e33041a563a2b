"""The default security policies, evaluated on specs built from requests."""

from __future__ import annotations

import pytest

from corebase.api.schemas import MountRequest, StartRequest
from corebase.auth.caller import Caller
from corebase.containers.networks import owner_network
from corebase.containers.spec import NAME_PATTERN, build_spec
from corebase.errors import InvalidField, PolicyDenied
from corebase.plugins import build_plugin_manager, collect_named
from corebase.security import PolicyRequest
from corebase.security.policy import dry_run_policies, enforce_policies
from corebase.settings import load_settings
from corebase_policies import corebase_security_policies
from corebase_policies.policies import IsolationByRole, RegistryAllowlist
from test_plugins import install_entry_point_plugin

SETTINGS = load_settings(environ={})
CALLER = Caller(key_id="key_test", user="alice", role="developer")
POLICIES = corebase_security_policies(settings=SETTINGS)


def policy_request(**fields) -> PolicyRequest:
    request = StartRequest(**{"image": "corebase-test/busybox:1", **fields})
    spec = build_spec(request, SETTINGS, container_id="ctr_0123456789abcdef", owner="alice")
    return PolicyRequest(spec=spec, caller=CALLER)


async def denial(**fields) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as caught:
        await enforce_policies(POLICIES, policy_request(**fields))
    return caught.value


async def test_plain_request_is_allowed():
    await enforce_policies(POLICIES, policy_request())


@pytest.mark.parametrize(
    ("fields", "policy", "text"),
    [
        ({"privileged": True}, "no-privileged", "privileged mode"),
        ({"network_mode": "host"}, "no-host-namespaces", "networkMode 'host'"),
        ({"network_mode": "HOST"}, "no-host-namespaces", "networkMode 'host'"),
        ({"pid_mode": "host"}, "no-host-namespaces", "pidMode 'host'"),
        ({"ipc_mode": " host "}, "no-host-namespaces", "ipcMode 'host'"),
        ({"pid_mode": "container:abc"}, "no-host-namespaces", "another container"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "no-host-mounts", "/var/run/docker.sock"),
        ({"mounts": [MountRequest(type="bind", source="/", target="/host")]}, "no-host-mounts", "host path '/'"),
    ],
)
async def test_dangerous_requests_are_denied(fields, policy, text):
    error = await denial(**fields)
    assert error.status == 403
    assert any(reason["policy"] == policy and text in reason["reason"] for reason in error.reasons), error.reasons


async def test_every_reason_reaches_the_caller():
    error = await denial(privileged=True, network_mode="host", volumes=["/etc:/etc"])
    policies = {reason["policy"] for reason in error.reasons}
    assert policies == {"no-privileged", "no-host-namespaces", "no-host-mounts"}


async def test_missing_limits_and_extra_capabilities_are_denied():
    request = policy_request()
    request.spec.memory = None
    request.spec.cap_add = ["SYS_ADMIN", "cap_chown"]
    with pytest.raises(PolicyDenied) as caught:
        await enforce_policies(POLICIES, request)
    reasons = " ".join(reason["reason"] for reason in caught.value.reasons)
    assert "memory" in reasons
    assert "SYS_ADMIN" in reasons
    assert "CHOWN" not in reasons.split("allowlist")[0]


def spec_request(caller: Caller = CALLER, settings=SETTINGS, **fields) -> PolicyRequest:
    request = StartRequest(**{"image": "corebase-test/busybox:1", **fields})
    spec = build_spec(request, settings, container_id="ctr_0123456789abcdef", owner=caller.user)
    return PolicyRequest(spec=spec, caller=caller)


async def test_devices_are_denied():
    error = await denial(devices=["/dev/fuse"])
    assert [reason["policy"] for reason in error.reasons] == ["no-devices"]
    assert "/dev/fuse" in error.reasons[0]["reason"]


@pytest.mark.parametrize(
    "image",
    [
        "corebase-test/busybox:1",
        "python:3.12-slim",
        "docker.io/library/python:3.12",
        "index.docker.io/library/redis:7",
        "localhost:5000/team/app:1",
        "127.0.0.1:5055/corebase-test/busybox:1",
        "postgres@sha256:" + "a" * 64,
    ],
)
def test_default_registries_allow_hub_and_loopback(image):
    decision = RegistryAllowlist(SETTINGS).evaluate(spec_request(image=image))
    assert decision.allowed, decision.reasons


@pytest.mark.parametrize(
    "image",
    [
        "quay.io/team/app:1",
        "docker.io.example.com/library/python:3",
        "127.0.0.1.example.com/app:1",
        "localhost.example.com:5000/app",
        "ghcr.io/owner/image:latest",
    ],
)
def test_other_registries_are_denied(image):
    decision = RegistryAllowlist(SETTINGS).evaluate(spec_request(image=image))
    assert not decision.allowed
    assert image in decision.reasons[0]
    assert "developer" in decision.reasons[0]


def test_registry_entries_by_port_and_path():
    settings = load_settings(
        environ={}, overrides={"security": {"allowed_registries": ["registry.example.com/team", "127.0.0.1:5055"]}}
    )
    policy = RegistryAllowlist(settings)
    assert policy.evaluate(spec_request(settings=settings, image="registry.example.com/team/app:1")).allowed
    assert not policy.evaluate(spec_request(settings=settings, image="registry.example.com/teammate/app:1")).allowed
    assert not policy.evaluate(spec_request(settings=settings, image="registry.example.com/app:1")).allowed
    assert policy.evaluate(spec_request(settings=settings, image="127.0.0.1:5055/app:1")).allowed
    assert not policy.evaluate(spec_request(settings=settings, image="127.0.0.1:5000/app:1")).allowed
    assert not policy.evaluate(spec_request(settings=settings, image="python:3.12")).allowed


def test_registries_differ_by_role():
    settings = load_settings(
        environ={},
        overrides={"security": {"allowed_registries": ["*"], "roles": {"developer": {"allowed_registries": ["quay.io"]}}}},
    )
    policy = RegistryAllowlist(settings)
    admin = Caller(key_id="key_admin", user="root", role="admin")
    assert policy.evaluate(spec_request(caller=admin, settings=settings, image="ghcr.io/a/b:1")).allowed
    assert not policy.evaluate(spec_request(settings=settings, image="ghcr.io/a/b:1")).allowed
    assert policy.evaluate(spec_request(settings=settings, image="quay.io/a/b:1")).allowed


def test_isolation_levels_differ_by_role():
    settings = load_settings(environ={}, overrides={"security": {"roles": {"developer": {"isolation": ["sandboxed"]}}}})
    policy = IsolationByRole(settings)
    denied = policy.evaluate(spec_request(settings=settings))
    assert not denied.allowed
    assert "'standard' is not allowed for role 'developer'" in denied.reasons[0]
    assert policy.evaluate(spec_request(settings=settings, isolation="sandboxed")).allowed
    admin = Caller(key_id="key_admin", user="root", role="admin")
    assert policy.evaluate(spec_request(caller=admin, settings=settings)).allowed


def test_sandboxed_spec_names_the_sandbox_runtime():
    spec = spec_request(isolation="sandboxed").spec
    assert spec.isolation == "sandboxed"
    assert spec.runtime == "runsc"
    assert spec_request().spec.runtime is None


@pytest.mark.parametrize(
    "network_mode",
    ["bridge", "default", "NONE", "corebase-bob-" + "0" * 8, owner_network("bob", SETTINGS)],
)
async def test_networks_but_owner_and_none_are_denied(network_mode):
    error = await denial(network_mode=network_mode)
    assert [reason["policy"] for reason in error.reasons] == ["owner-network-only"]


async def test_owner_network_and_none_are_allowed():
    await enforce_policies(POLICIES, policy_request(network_mode=owner_network("alice", SETTINGS)))
    await enforce_policies(POLICIES, policy_request(network="none"))
    assert policy_request().spec.network_mode == owner_network("alice", SETTINGS)


def test_owner_network_names_are_distinct_and_valid():
    names = {owner_network(owner, SETTINGS) for owner in ("alice", "Alice", "al ice", "al-ice", "x" * 200)}
    assert len(names) == 5
    for name in names:
        assert NAME_PATTERN.match(name), name


async def test_exempt_policy_is_skipped_for_its_role():
    request = policy_request(devices=["/dev/fuse"])
    await enforce_policies(POLICIES, request, exempt={"no-devices"})
    verdicts = await dry_run_policies(POLICIES, request, exempt={"no-devices"})
    by_name = {verdict.policy: verdict for verdict in verdicts}
    assert by_name["no-devices"].exempt
    assert not by_name["no-devices"].allowed
    assert all(verdict.allowed for verdict in verdicts if verdict.policy != "no-devices")


async def test_dry_run_returns_every_policy():
    verdicts = await dry_run_policies(POLICIES, policy_request(privileged=True))
    assert [verdict.policy for verdict in verdicts] == [policy.name for policy in POLICIES]
    denied = [verdict for verdict in verdicts if not verdict.allowed]
    assert [verdict.policy for verdict in denied] == ["no-privileged"]
    assert denied[0].reasons


# Spellings of a bind mount of the Docker socket or another host path. Each must reach the
# no-host-mounts deny; `socket` marks those the reason must name as the Docker socket.
BIND_SPELLINGS = [
    ({"volumes": ["/var/run/docker.sock:/x"]}, True),
    ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro"]}, True),
    ({"volumes": ["//var/run/docker.sock:/x"]}, True),
    ({"volumes": ["/var/run/./docker.sock:/x"]}, True),
    ({"volumes": ["/var/run/../run/docker.sock:/x"]}, True),
    ({"volumes": ["/run/docker.sock:/x:rw"]}, True),
    ({"volumes": ["/var/run/:/x"]}, False),
    ({"volumes": ["var/run/docker.sock:/x"]}, False),
    ({"volumes": ["./docker.sock:/x"]}, False),
    ({"volumes": ["../../var/run/docker.sock:/x"]}, False),
    ({"volumes": ["~/docker.sock:/x"]}, False),
    ({"volumes": ["/:/host"]}, False),
    ({"mounts": [MountRequest(type="bind", source="/var/run/docker.sock", target="/x")]}, True),
    ({"mounts": [MountRequest(type="bind", source="/var/run/docker.sock/", target="/x")]}, True),
    ({"mounts": [MountRequest(type="bind", source="//run//docker.sock", target="/x", read_only=True)]}, True),
    ({"mounts": [MountRequest(type="bind", source="/etc", target="/etc")]}, False),
]


@pytest.mark.parametrize(("fields", "socket"), BIND_SPELLINGS)
async def test_bind_spellings_are_denied(fields, socket):
    error = await denial(**fields)
    reasons = [reason for reason in error.reasons if reason["policy"] == "no-host-mounts"]
    assert len(reasons) == 1, error.reasons
    if socket:
        assert "Docker socket" in reasons[0]["reason"]


async def test_symlink_to_docker_socket_is_named(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/var/run/docker.sock")
    error = await denial(mounts=[MountRequest(type="bind", source=str(link), target="/x")])
    assert "Docker socket" in error.reasons[0]["reason"]
    assert str(link) in error.reasons[0]["reason"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"volumes": ["type=bind,source=/var/run/docker.sock,target=/x"]}, "volumes[0]"),
        ({"volumes": ["/var/run/docker.sock:x"]}, "volumes[0]"),
        ({"volumes": [":/x"]}, "volumes[0]"),
        ({"volumes": ["a:b:c:d"]}, "volumes[0]"),
        ({"mounts": [MountRequest(type="volume", source="/var/run/docker.sock", target="/x")]}, "mounts[0].source"),
        ({"mounts": [MountRequest(type="volume", source="../x", target="/x")]}, "mounts[0].source"),
    ],
)
def test_malformed_mounts_are_invalid(fields, field):
    with pytest.raises(InvalidField) as caught:
        policy_request(**fields)
    assert caught.value.field == field


async def test_third_party_policy_loads_from_entry_point(tmp_path, monkeypatch):
    install_entry_point_plugin(
        tmp_path,
        monkeypatch,
        "cbtest_label_policy",
        """
        from corebase import hookimpl
        from corebase.security import Decision


        class RequireTeamLabel:
            name = "require-team-label"

            async def evaluate(self, request):
                if "team" in request.spec.labels:
                    return Decision.allow()
                return Decision.deny("add a 'team' label naming the team that owns the container")


        @hookimpl
        def corebase_security_policies(settings):
            return [RequireTeamLabel()]
        """,
    )
    manager = build_plugin_manager(SETTINGS)
    policies = collect_named(manager, "corebase_security_policies", SETTINGS, "security policy")
    assert "require-team-label" in [policy.name for policy in policies]
    assert "no-privileged" in [policy.name for policy in policies]

    with pytest.raises(PolicyDenied) as caught:
        await enforce_policies(policies, policy_request(privileged=True))
    assert {reason["policy"] for reason in caught.value.reasons} == {"no-privileged", "require-team-label"}
    await enforce_policies(policies, policy_request(labels={"team": "payments"}))
