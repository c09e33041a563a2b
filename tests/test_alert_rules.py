"""Alert rule logic without a database: validation, matching, state changes and the webhook notifier's checks."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from corebase.alerts.rules import (
    Rule,
    lifecycle_quiet,
    metric_transition,
    public_notifiers,
    starts_within,
    validate_notifiers,
    validate_rule,
)
from corebase.errors import InvalidField
from corebase_metrics.notifiers import LogNotifier, WebhookNotifier, sign

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
SECRET = "s3cret-s3cret-s3cret"
NOTIFIERS = {"webhook": WebhookNotifier(5.0, ["127.0.0.1", "hooks.example.com:8443"]), "log": LogNotifier()}


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("state", "holds", "duration", "elapsed", "expected"),
    [
        (None, False, 5, 0, None),
        (None, True, 5, 0, "pending"),
        (None, True, 0, 0, "firing"),
        ("pending", True, 5, 4.9, None),
        ("pending", True, 5, 5, "firing"),
        ("pending", False, 5, 1, "resolved"),
        ("firing", True, 5, 100, None),
        ("firing", False, 5, 100, "resolved"),
    ],
)
def test_metric_transition(state, holds, duration, elapsed, expected):
    assert metric_transition(state, holds, T0, duration, later(elapsed)) == expected


@pytest.mark.parametrize(
    ("status", "started", "occurred", "now", "expected"),
    [
        ("running", 0, 0, 29, False),
        ("running", 0, 0, 30, True),
        ("running", 20, 0, 40, False),
        ("running", 0, 20, 40, False),
        ("running", 0, 20, 50, True),
        ("exited", 0, 0, 100, False),
        (None, 0, 0, 100, False),
    ],
)
def test_lifecycle_quiet(status, started, occurred, now, expected):
    assert lifecycle_quiet(status, later(started), later(occurred), 30, later(now)) is expected


def test_starts_within_counts_the_window_only():
    starts = [later(0), later(50), later(90), later(100)]
    assert starts_within(starts, later(100), 60) == 3
    assert starts_within(starts, later(100), 5) == 1


def rule(**fields) -> Rule:
    values = {
        "id": "rule_1",
        "name": "busy",
        "owner": "alice",
        "metric": "cpu_percent",
        "comparator": ">",
        "threshold": 20.0,
        "duration": 0.0,
        "window": 0.0,
        "scope": "all",
        "scope_value": None,
        "severity": "warning",
        "notifiers": [],
        **fields,
    }
    return Rule(**values)


@pytest.mark.parametrize(
    ("fields", "container", "expected"),
    [
        ({}, ("alice", "ctr_1", None, None), True),
        ({}, ("bob", "ctr_1", None, None), False),
        ({"all_owners": True}, ("bob", "ctr_1", None, None), True),
        ({"scope": "container", "scope_value": "ctr_1"}, ("alice", "ctr_1", None, None), True),
        ({"scope": "container", "scope_value": "ctr_2"}, ("alice", "ctr_1", None, None), False),
        ({"scope": "project", "scope_value": "p"}, ("alice", "ctr_1", "p", None), True),
        ({"scope": "project", "scope_value": "p"}, ("alice", "ctr_1", "q", None), False),
        ({"scope": "template", "scope_value": "python"}, ("alice", "ctr_1", None, "python"), True),
        ({"scope": "template", "scope_value": "python"}, ("alice", "ctr_1", None, "node"), False),
    ],
)
def test_rule_applies_to(fields, container, expected):
    assert rule(**fields).applies_to(*container) is expected


@pytest.mark.parametrize(("comparator", "value", "expected"), [(">", 20, False), (">=", 20, True), ("<", 19, True), ("<=", 21, False)])
def test_rule_comparators(comparator, value, expected):
    assert rule(comparator=comparator).holds(value) is expected


def fields(**overrides) -> dict:
    return {"name": "busy", "metric": "cpu_percent", "comparator": ">", "threshold": 20, **overrides}


def test_metric_rule_defaults():
    values = validate_rule(fields(), NOTIFIERS, 300)
    assert values == {
        "name": "busy",
        "metric": "cpu_percent",
        "comparator": ">",
        "threshold": 20.0,
        "duration": 0.0,
        "window": 0.0,
        "scope": "all",
        "scope_value": None,
        "severity": "warning",
        "notifiers": [],
        "enabled": True,
    }


def test_lifecycle_rules_take_the_default_window():
    assert validate_rule({"name": "oom", "metric": "oom_killed"}, NOTIFIERS, 300)["window"] == 300.0
    restart = validate_rule({"name": "loop", "metric": "restart_loop", "threshold": 3}, NOTIFIERS, 300)
    assert (restart["comparator"], restart["threshold"], restart["window"]) == (">=", 3.0, 300.0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": " "}, "name"),
        ({"metric": "disk_percent"}, "metric"),
        ({"comparator": "=="}, "comparator"),
        ({"comparator": None}, "comparator"),
        ({"threshold": None}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"duration": -1}, "duration"),
        ({"window": 10}, "window"),
        ({"scope": "host"}, "scope"),
        ({"scope": "project"}, "scopeValue"),
        ({"scope": "all", "scope_value": "x"}, "scopeValue"),
        ({"severity": "panic"}, "severity"),
        ({"metric": "oom_killed", "comparator": None, "threshold": 1}, "threshold"),
        ({"metric": "oom_killed", "comparator": ">"}, "comparator"),
        ({"metric": "exited_unexpectedly", "comparator": None, "threshold": None, "duration": 5}, "duration"),
        ({"metric": "restart_loop", "comparator": None, "threshold": 1}, "threshold"),
        ({"metric": "restart_loop", "comparator": None, "threshold": 2.5}, "threshold"),
        ({"metric": "restart_loop", "comparator": None, "window": 0}, "window"),
        ({"notifiers": [{"type": "pager"}]}, "notifiers[0].type"),
        ({"notifiers": [{"url": "http://127.0.0.1/hook"}]}, "notifiers[0].type"),
        ({"notifiers": [{"type": "webhook", "url": "http://user:pw@127.0.0.1/hook", "secret": SECRET}]}, "notifiers[0].url"),
        ({"notifiers": ["log"]}, "notifiers[0]"),
        ({"notifiers": [{"type": "log", "level": "debug"}]}, "notifiers[0].level"),
        ({"notifiers": [{"type": "log"}, {"type": "webhook", "url": "ftp://127.0.0.1/x", "secret": SECRET}]}, "notifiers[1].url"),
        ({"notifiers": [{"type": "webhook", "url": "http://10.0.0.1/hook", "secret": SECRET}]}, "notifiers[0].url"),
        ({"notifiers": [{"type": "webhook", "url": "http:///hook", "secret": SECRET}]}, "notifiers[0].url"),
        ({"notifiers": [{"type": "webhook", "url": "http://127.0.0.1/hook", "secret": "short"}]}, "notifiers[0].secret"),
        ({"notifiers": [{"type": "webhook", "url": "http://127.0.0.1/hook"}]}, "notifiers[0].secret"),
        ({"notifiers": [{"type": "log"}] * 11}, "notifiers"),
    ],
)
def test_invalid_rule_names_the_field(overrides, field):
    with pytest.raises(InvalidField) as raised:
        validate_rule(fields(**overrides), NOTIFIERS, 300)
    assert raised.value.field == field
    assert raised.value.status == 422


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:9000/hook", True),
        ("https://hooks.example.com:8443/a", True),
        ("https://hooks.example.com/a", False),
        ("http://hooks.example.com:8443/a", True),
        ("http://localhost/hook", False),
    ],
)
def test_webhook_host_list(url, allowed):
    entry = {"type": "webhook", "url": url, "secret": SECRET}
    if allowed:
        assert NOTIFIERS["webhook"].validate(entry) == entry
    else:
        with pytest.raises(ValueError, match="not allowed"):
            NOTIFIERS["webhook"].validate(entry)


def test_empty_host_list_allows_any_host():
    entry = {"type": "webhook", "url": "https://anywhere.example.org/x", "secret": SECRET}
    assert WebhookNotifier(5.0, []).validate(entry) == entry


def test_signature_is_hmac_sha256_of_the_body():
    body = b'{"transition":"firing"}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == "sha256=" + expected
    assert sign(SECRET, body + b" ") != sign(SECRET, body)


def test_secrets_are_hidden_and_kept_on_replace():
    stored = validate_notifiers([{"type": "webhook", "url": "http://127.0.0.1/a", "secret": SECRET}], NOTIFIERS)
    assert public_notifiers(stored, NOTIFIERS) == [{"type": "webhook", "url": "http://127.0.0.1/a", "secretSet": True}]

    kept = validate_notifiers([{"type": "webhook", "url": "http://127.0.0.1/a"}], NOTIFIERS, stored)
    assert kept[0]["secret"] == SECRET
    with pytest.raises(InvalidField) as raised:
        validate_notifiers([{"type": "webhook", "url": "http://127.0.0.1/b"}], NOTIFIERS, stored)
    assert raised.value.field == "notifiers[0].secret"
