"""Reading alert history and the delivery log, limited to what the caller owns (everything for an admin)."""

from __future__ import annotations

from typing import Any

from corebase.alerts.tables import Alert, AlertDelivery
from corebase.auth.caller import Caller
from corebase.errors import AlertNotFound


async def list_alerts(
    caller: Caller,
    state: str | None = None,
    rule_id: str | None = None,
    container_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Return one page of alerts, newest first, and the number of alerts that match."""
    conditions = []
    if not caller.is_admin:
        conditions.append(Alert.owner == caller.user)
    if state is not None:
        conditions.append(Alert.state == state)
    if rule_id is not None:
        conditions.append(Alert.rule_id == rule_id)
    if container_id is not None:
        conditions.append(Alert.container_id == container_id)

    query = Alert.select().order_by(Alert.started_at, ascending=False).order_by(Alert.id).limit(limit).offset(offset)
    count = Alert.count()
    if conditions:
        query = query.where(*conditions)
        count = count.where(*conditions)
    return await query, await count


async def get_alert(caller: Caller, alert_id: str) -> dict[str, Any]:
    row = await Alert.select().where(Alert.id == alert_id).first()
    if row is None or not (caller.is_admin or row["owner"] == caller.user):
        raise AlertNotFound(alert_id)
    return row


async def list_deliveries(caller: Caller, alert_id: str) -> list[dict[str, Any]]:
    """Return every delivery attempt of an alert in the order they were made."""
    await get_alert(caller, alert_id)
    return await AlertDelivery.select().where(AlertDelivery.alert_id == alert_id).order_by(AlertDelivery.id)
