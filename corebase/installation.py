"""The identity of one CoreBase installation: one database, whatever number of API processes share it.

A migration stores a random id in the `installation` table once per database. Every container
CoreBase creates carries it in the label `corebase.installation`, so the reconciler can tell the
containers of its own installation from those of another installation on the same engine, and
never removes or adopts the others.
"""

from __future__ import annotations

from piccolo.columns import Varchar
from piccolo.table import Table

from corebase.errors import ConfigError


class Installation(Table, tablename="installation"):
    id = Varchar(length=32, primary_key=True)


async def installation_id() -> str:
    """Return the id of the connected database's installation.

    Raises ConfigError when the table has no row, which happens only when migrations have not run.
    """
    row = await Installation.select(Installation.id).first()
    if row is None:
        raise ConfigError("the database has no installation id; run 'corebase migrate' to apply pending migrations")
    return row["id"]
