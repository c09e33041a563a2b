"""The idempotency_keys table: one row per API user and Idempotency-Key of a start request."""

from piccolo.columns import Integer, Text, Timestamptz, Varchar
from piccolo.table import Table

# A key's row is "in_progress" while the first request with it runs, then "done" with the response.
IN_PROGRESS = "in_progress"
DONE = "done"


class IdempotencyKey(Table, tablename="idempotency_keys"):
    # SHA-256 (hex) of the owner and the key, so a key is unique per user with a one-column primary key.
    id = Varchar(length=64, primary_key=True)
    owner = Varchar(length=200, index=True)
    idempotency_key = Varchar(length=255)
    # SHA-256 (hex) of the method, path and canonical body of the request that first used the key.
    fingerprint = Varchar(length=64)
    status = Varchar(length=16)
    # Random per attempt: only the attempt that holds it may store the response or release the key.
    lock_token = Varchar(length=32, null=True, default=None)
    # While in progress, the time after which another request may take the key over.
    locked_until = Timestamptz(null=True, default=None)
    container_id = Varchar(length=32, null=True, default=None)
    response_status = Integer(null=True, default=None)
    # The response body, replayed byte for byte; a template's generated credentials included.
    response_body = Text(null=True, default=None)
    created_at = Timestamptz()
    expires_at = Timestamptz(index=True)
