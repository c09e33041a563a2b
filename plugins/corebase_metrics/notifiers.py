"""The built-in alert notifiers: `webhook` (a signed JSON POST) and `log` (one line on corebase.alerts).

A webhook entry is ``{"type": "webhook", "url": "https://...", "secret": "..."}``. The body is the
JSON object ``{"deliveryId", "sentAt", "transition", "alert", "rule"}``, and the header
``X-CoreBase-Signature: sha256=<hex>`` carries the HMAC-SHA256 of the exact body bytes keyed with
the entry's secret. The secret is write-only: the API never returns it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from corebase import __version__
from corebase.alerts.notifiers import DeliveryResult, InvalidNotifierConfig, Notification

SIGNATURE_HEADER = "X-CoreBase-Signature"
TIMESTAMP_HEADER = "X-CoreBase-Timestamp"
DELIVERY_HEADER = "X-CoreBase-Delivery"
TRANSITION_HEADER = "X-CoreBase-Transition"
# An HMAC key shorter than this is easy to guess; 16 characters of a random token are enough.
MIN_SECRET_LENGTH = 16
# Statuses after which a later attempt may succeed; any other non-2xx status is final.
RETRY_STATUSES = {408, 425, 429}

alert_logger = logging.getLogger("corebase.alerts")


def sign(secret: str, body: bytes) -> str:
    """Return the signature header value for `body`: ``sha256=`` and the hex HMAC-SHA256 keyed with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    name = "webhook"
    secret_fields = ("secret",)

    def __init__(self, timeout: float, hosts: list[str]) -> None:
        self.timeout = timeout
        self.hosts = {host.strip().lower() for host in hosts if host.strip()}

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        for key in config:
            if key not in ("type", "url", "secret"):
                raise InvalidNotifierConfig(key, f"unknown field {key!r}; a webhook entry takes type, url and secret")
        url = config.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidNotifierConfig("url", "url is missing; give the http:// or https:// address to POST alerts to")
        problem = self._url_problem(url)
        if problem:
            raise InvalidNotifierConfig("url", problem)

        secret = config.get("secret")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            raise InvalidNotifierConfig(
                "secret",
                f"secret must be a string of at least {MIN_SECRET_LENGTH} characters, used to sign each body; "
                "generate a random token",
            )
        return {"type": self.name, "url": url, "secret": secret}

    def _url_problem(self, url: str) -> str | None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"url {url!r} is not a valid URL: {exc}"
        if parts.scheme not in ("http", "https"):
            return f"url scheme {parts.scheme or '(none)'!r} is not supported; use http:// or https://"
        if parts.username is not None or parts.password is not None:
            # The URL is shown in rule records and webhook bodies; only the secret is kept hidden.
            return "url must not contain a user name or password; authenticate the receiver with the secret's signature"
        host = (parts.hostname or "").lower()
        if not host:
            return f"url {url!r} has no host; use a URL such as https://hooks.example.com/corebase"
        if self.hosts:
            port = port or (443 if parts.scheme == "https" else 80)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if host not in self.hosts and address not in self.hosts:
                allowed = ", ".join(sorted(self.hosts))
                return (
                    f"host {host!r} is not allowed for webhooks; use one of {allowed}, "
                    "or ask the administrator to add it to alerts.webhook_hosts"
                )
        return None

    async def send(self, notification: Notification, config: dict[str, Any]) -> DeliveryResult:
        url = config["url"]
        target = _target(url)
        # The host list may have changed since the rule was saved.
        problem = self._url_problem(url)
        if problem:
            return DeliveryResult(ok=False, target=target, error=problem, retry=False)

        sent_at = datetime.now(timezone.utc)
        body = msgspec.json.encode(
            {
                "deliveryId": notification.delivery_id,
                "sentAt": sent_at,
                "transition": notification.transition,
                "alert": notification.alert,
                "rule": notification.rule,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"CoreBase/{__version__}",
            SIGNATURE_HEADER: sign(config["secret"], body),
            TIMESTAMP_HEADER: str(int(sent_at.timestamp())),
            DELIVERY_HEADER: notification.delivery_id,
            TRANSITION_HEADER: notification.transition,
        }
        # trust_env=False: no proxy from the environment, so the body goes to the URL's host only.
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False, follow_redirects=False) as client:
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.TimeoutException:
                return DeliveryResult(ok=False, target=target, error=f"timed out after {self.timeout:g} s")
            except httpx.HTTPError as exc:
                return DeliveryResult(ok=False, target=target, error=f"request failed: {exc or type(exc).__name__}")

        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(ok=True, target=target, status_code=status)
        retry = status >= 500 or status in RETRY_STATUSES
        return DeliveryResult(
            ok=False, target=target, status_code=status, error=f"the receiver answered HTTP {status}", retry=retry
        )


def _target(url: str) -> str:
    """Return the URL as the delivery log shows it, without user info, query or fragment, which may contain tokens."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class LogNotifier:
    """Writes one line per alert change on the logger corebase.alerts: WARNING when firing, INFO when resolved."""

    name = "log"
    secret_fields: tuple[str, ...] = ()

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        for key in config:
            if key != "type":
                raise InvalidNotifierConfig(key, f"unknown field {key!r}; a log entry takes only type")
        return {"type": self.name}

    async def send(self, notification: Notification, config: dict[str, Any]) -> DeliveryResult:
        alert, rule = notification.alert, notification.rule
        level = logging.WARNING if notification.transition == "firing" else logging.INFO
        alert_logger.log(
            level,
            "alert %s %s: rule %s (%r, severity %s) on container %s: %s",
            alert.get("id"),
            notification.transition,
            rule.get("id"),
            rule.get("name"),
            alert.get("severity"),
            alert.get("containerId"),
            alert.get("message"),
        )
        return DeliveryResult(ok=True, target=alert_logger.name)
