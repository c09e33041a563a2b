"""Storage of API keys. Only a SHA-256 hash of each secret is kept."""

from piccolo.columns import Timestamptz, Varchar
from piccolo.table import Table


class ApiKey(Table, tablename="api_keys"):
    id = Varchar(length=32, primary_key=True)
    name = Varchar(length=200)
    user = Varchar(length=200, index=True)
    role = Varchar(length=20, default="developer")
    # The first characters of the secret, shown in listings so a person can tell keys apart.
    prefix = Varchar(length=16)
    key_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    expires_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)
