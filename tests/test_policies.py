"""The default security policies, evaluated on specs built from requests."""

from __future__ import annotations

import pytest

from corebase.api.schemas import MountRequest, StartRequest
from corebase.auth.caller import Caller
from corebase.containers.spec import build_spec
from corebase.errors import PolicyDenied
from corebase.security import PolicyRequest
from corebase.security.policy import enforce_policies
from corebase.settings import load_settings
from corebase_policies import corebase_security_policies

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
