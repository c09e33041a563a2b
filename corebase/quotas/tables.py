"""Per-user quota limits; a null limit means the configured default applies."""

from piccolo.columns import BigInt, Integer, Real, Timestamptz, Varchar
from piccolo.table import Table


class UserQuota(Table, tablename="user_quotas"):
    user = Varchar(length=200, unique=True)
    max_containers = Integer(null=True, default=None)
    # Totals over the user's active containers.
    max_memory_bytes = BigInt(null=True, default=None)
    max_cpus = Real(null=True, default=None)
    # Limits of any one container.
    max_container_memory_bytes = BigInt(null=True, default=None)
    max_container_cpus = Real(null=True, default=None)
    updated_at = Timestamptz()
