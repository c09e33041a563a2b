"""API keys, the authenticated caller, and the middleware that checks every request."""

from corebase.auth.caller import Caller

__all__ = ["Caller"]
