"""Security policies: the contract a policy plugin implements, and how the core applies them."""

from corebase.security.policy import Decision, Policy, PolicyRequest, evaluate_policies

__all__ = ["Decision", "Policy", "PolicyRequest", "evaluate_policies"]
