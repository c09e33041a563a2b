"""The audit log: append-only, each record chained to the one before by a SHA-256 hash."""

from piccolo.columns import JSON, BigSerial, Integer, Text, Timestamptz, Varchar
from piccolo.table import Table


class AuditRecord(Table, tablename="audit_log"):
    """Who did what to which target, with what outcome.

    `hash` covers this record's fields and `prev_hash`, the hash of the record before it, so an
    edited, deleted or inserted record breaks the chain from that point on.
    """

    id = BigSerial(primary_key=True)
    created_at = Timestamptz()
    actor = Varchar(length=200, null=True, default=None)
    key_id = Varchar(length=32, null=True, default=None)
    role = Varchar(length=20, null=True, default=None)
    action = Varchar(length=64)
    target_type = Varchar(length=32, null=True, default=None)
    target_id = Varchar(length=200, null=True, default=None)
    # success, denied or failed.
    outcome = Varchar(length=16)
    status = Integer(null=True, default=None)
    reason = Text(default="")
    source = Varchar(length=64, default="")
    request_id = Varchar(length=64, default="")
    details = JSON(default="{}")
    prev_hash = Varchar(length=64)
    hash = Varchar(length=64, unique=True)
