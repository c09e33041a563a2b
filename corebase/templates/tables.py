"""Stored templates. Each update adds a row with the next version; earlier versions stay."""

from piccolo.columns import JSON, Boolean, Integer, Text, Timestamptz, Varchar
from piccolo.table import Table


class ContainerTemplate(Table, tablename="container_templates"):
    name = Varchar(length=128, index=True)
    version = Integer(default=1)
    category = Varchar(length=32)
    description = Text(default="")
    image = Varchar(length=512)
    # The whole TemplateSpec, encoded by msgspec.
    spec = JSON(default="{}")
    owner = Varchar(length=200, null=True, default=None)
    builtin = Boolean(default=False)
    created_at = Timestamptz()
    # Set on every version when the template is deleted; the rows stay for the containers made from them.
    deleted_at = Timestamptz(null=True, default=None)
