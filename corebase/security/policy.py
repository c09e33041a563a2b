"""The policy contract, and evaluation of every policy against one container spec."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

from corebase.errors import PolicyDenied
from corebase.runtime.types import ContainerSpec

if TYPE_CHECKING:
    from corebase.auth.caller import Caller

logger = logging.getLogger(__name__)


class Decision(msgspec.Struct, frozen=True):
    """One policy's verdict. A deny carries at least one reason a person can act on."""

    allowed: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def allow(cls) -> Decision:
        return cls(allowed=True)

    @classmethod
    def deny(cls, *reasons: str) -> Decision:
        return cls(allowed=False, reasons=reasons)


class PolicyRequest(msgspec.Struct, frozen=True):
    """What a policy judges: the full spec about to be created, the caller, and the template it comes from."""

    spec: ContainerSpec
    caller: Caller
    template: str | None = None


@runtime_checkable
class Policy(Protocol):
    """A named check over container specs. `evaluate` may be a plain function or a coroutine."""

    name: str

    def evaluate(self, request: PolicyRequest) -> Decision:
        """Return allow, or deny with reasons; and do not raise for a spec that is merely rejected."""


async def evaluate_policies(
    policies: Sequence[Policy], request: PolicyRequest
) -> list[tuple[str, Decision]]:
    """Run every policy and return (policy name, decision) pairs in order."""
    verdicts = []
    for policy in policies:
        decision = policy.evaluate(request)
        if inspect.isawaitable(decision):
            decision = await decision
        verdicts.append((policy.name, decision))
    return verdicts


class Verdict(msgspec.Struct, frozen=True):
    """One policy's decision in a dry run. An exempt policy is evaluated and shown, but not enforced."""

    policy: str
    allowed: bool
    reasons: tuple[str, ...] = ()
    exempt: bool = False


async def dry_run_policies(
    policies: Sequence[Policy], request: PolicyRequest, exempt: Collection[str] = ()
) -> list[Verdict]:
    """Evaluate every policy, exempt ones included, and return each verdict without raising."""
    return [
        Verdict(policy=name, allowed=decision.allowed, reasons=decision.reasons, exempt=name in exempt)
        for name, decision in await evaluate_policies(policies, request)
    ]


async def enforce_policies(policies: Sequence[Policy], request: PolicyRequest, exempt: Collection[str] = ()) -> None:
    """Raise PolicyDenied with the reasons of every denying policy, or return when all allow.

    Policies named in `exempt` (the caller's role's `exempt_policies`) are not evaluated.
    """
    verdicts = await evaluate_policies([policy for policy in policies if policy.name not in exempt], request)
    reasons = [
        {"policy": name, "reason": reason}
        for name, decision in verdicts
        if not decision.allowed
        for reason in (decision.reasons or ("denied without a stated reason",))
    ]
    if reasons:
        logger.info(
            "policy denied container spec: caller=%s image=%s policies=%s",
            request.caller.user,
            request.spec.image,
            sorted({reason["policy"] for reason in reasons}),
        )
        raise PolicyDenied(reasons)
