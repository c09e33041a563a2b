"""Alert rules, the alerts they raise, and the log of every notification delivery attempt."""

from piccolo.columns import JSON, Boolean, Integer, Real, Serial, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class AlertRule(Table, tablename="alert_rules"):
    """A condition over a metric or a lifecycle event, for a scope of containers, and who to tell."""

    id = Varchar(length=32, primary_key=True)
    name = Varchar(length=128)
    owner = Varchar(length=128, index=True)
    metric = Varchar(length=32)
    comparator = Varchar(length=2, default=">")
    threshold = Real(default=0.0)
    duration = Real(default=0.0)
    window = Real(default=0.0)
    scope = Varchar(length=16, default="all")
    scope_value = Varchar(length=128, null=True, default=None)
    severity = Varchar(length=16, default="warning")
    notifiers = JSON(default="[]")
    enabled = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class Alert(Table, tablename="alerts"):
    """One rule's condition on one container, from pending through firing to resolved."""

    id = Varchar(length=32, primary_key=True)
    rule_id = Varchar(length=32, index=True)
    container_id = Varchar(length=32, index=True)
    owner = Varchar(length=128, index=True)
    project_id = Varchar(length=128, null=True, default=None)
    state = Varchar(length=16, index=True)
    severity = Varchar(length=16, default="warning")
    metric = Varchar(length=32)
    value = Real(null=True, default=None)
    threshold = Real(default=0.0)
    message = Text(default="")
    started_at = Timestamptz(default=TimestamptzNow())
    fired_at = Timestamptz(null=True, default=None)
    resolved_at = Timestamptz(null=True, default=None)
    updated_at = Timestamptz(default=TimestamptzNow())


class AlertDelivery(Table, tablename="alert_deliveries"):
    """One attempt to send one alert change through one notifier."""

    id = Serial(primary_key=True)
    alert_id = Varchar(length=32, index=True)
    rule_id = Varchar(length=32, index=True)
    notifier = Varchar(length=32)
    target = Varchar(length=512, default="")
    transition = Varchar(length=16)
    attempt = Integer(default=1)
    ok = Boolean(default=False)
    status_code = Integer(null=True, default=None)
    error = Text(default="")
    delivered_at = Timestamptz(default=TimestamptzNow())
