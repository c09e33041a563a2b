"""CoreBase's default security policies, registered as an ordinary plugin.

Each policy denies one class of dangerous spec with a reason that states what to change. A deployer
can disable the whole set with `plugins.disabled = ["corebase_policies"]` and provide their own.
"""

from __future__ import annotations

from corebase import hookimpl
from corebase.settings import Settings
from corebase_policies.policies import (
    CapabilityAllowlist,
    IsolationByRole,
    NoDevices,
    NoHostMounts,
    NoHostNamespaces,
    NoPrivileged,
    OwnerNetworkOnly,
    RegistryAllowlist,
    RequireLimits,
)


@hookimpl
def corebase_security_policies(settings: Settings) -> list:
    return [
        NoPrivileged(),
        NoHostNamespaces(),
        NoHostMounts(),
        NoDevices(),
        CapabilityAllowlist(settings.containers.cap_add),
        RegistryAllowlist(settings),
        IsolationByRole(settings),
        OwnerNetworkOnly(settings),
        RequireLimits(),
    ]
