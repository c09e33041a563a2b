"""/api/policies: dry runs of the security policies against a start request."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from corebase.api.openapi import ENGINE_STATUSES, problem_responses
from corebase.api.schemas import Record, StartRequest
from corebase.auth.caller import Caller
from corebase.containers.service import ContainerService


class PolicyVerdictRecord(Record):
    policy: str
    allowed: bool
    reasons: list[str]
    # True when the caller's role is exempt from this policy, so its deny would not stop a start.
    exempt: bool


class PolicyEvaluationRecord(Record):
    # Whether a start with this body would pass every policy that applies to the caller.
    allowed: bool
    verdicts: list[PolicyVerdictRecord]


class PolicyController(Controller):
    path = "/api/policies"
    tags = ["policies"]

    @post(
        "/evaluate",
        status_code=HTTP_200_OK,
        summary="Evaluate the security policies against a start request without starting anything",
        description="Takes the body of POST /api/runtime/start, builds the container spec it would create "
        "for the caller, and returns every policy's verdict. An invalid body fails as the start would.",
        responses=problem_responses(404, 422, *ENGINE_STATUSES),
    )
    async def evaluate(
        self,
        data: JSONBody[StartRequest],
        caller: NamedDependency[Caller],
        containers: NamedDependency[ContainerService],
    ) -> PolicyEvaluationRecord:
        verdicts = await containers.evaluate(caller, data)
        return PolicyEvaluationRecord(
            allowed=all(verdict.allowed or verdict.exempt for verdict in verdicts),
            verdicts=[
                PolicyVerdictRecord(
                    policy=verdict.policy,
                    allowed=verdict.allowed,
                    reasons=list(verdict.reasons),
                    exempt=verdict.exempt,
                )
                for verdict in verdicts
            ],
        )
