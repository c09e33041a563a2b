"""Storage of users and API keys. Only a SHA-256 hash of each key's secret is kept."""

from piccolo.columns import JSON, Timestamptz, Varchar
from piccolo.table import Table


class User(Table, tablename="users"):
    """A person or program that owns containers, templates, pools and alert rules, with one role."""

    name = Varchar(length=200, primary_key=True)
    # admin, developer or viewer.
    role = Varchar(length=20, default="developer")
    created_at = Timestamptz()
    updated_at = Timestamptz()
    disabled_at = Timestamptz(null=True, default=None)


class ApiKey(Table, tablename="api_keys"):
    id = Varchar(length=32, primary_key=True)
    name = Varchar(length=200)
    user = Varchar(length=200, index=True)
    role = Varchar(length=20, default="developer")
    # What the key may do within its user's role; an empty list means everything the role allows.
    scopes = JSON(default="[]")
    # The first characters of the secret, shown in listings so a person can tell keys apart.
    prefix = Varchar(length=16)
    key_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    expires_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)
