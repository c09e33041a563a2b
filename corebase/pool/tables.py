"""Pool configuration, one row per pooled template."""

from piccolo.columns import Integer, Real, Text, Timestamptz, Varchar
from piccolo.table import Table


class Pool(Table, tablename="pools"):
    template = Varchar(length=128, unique=True)
    min_idle = Integer(default=1)
    max_idle = Integer(default=4)
    max_total = Integer(default=8)
    idle_ttl = Real(default=3600.0)
    # The idle count the autoscaler currently aims for, between min_idle and max_idle.
    target = Integer(default=1)
    owner = Varchar(length=200, null=True, default=None)
    # "config" for pools declared in settings, "api" for pools created through the API.
    origin = Varchar(length=8, default="api")
    last_error = Text(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()
