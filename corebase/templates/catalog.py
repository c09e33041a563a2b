"""The template catalog: built-in templates from plugins, and custom ones stored with versions.

Built-ins live in memory, with the images from `templates.images` applied. Custom templates live
in `container_templates`, one row per version; reads always ask the database, so every API
process reads a change at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import msgspec

from corebase.auth.caller import Caller
from corebase.containers.tables import ACTIVE_STATUSES, Container
from corebase.errors import ConfigError, Conflict, TemplateInUse, TemplateNotFound
from corebase.pool.tables import Pool
from corebase.templates import TemplateCategory, TemplateSpec
from corebase.templates.tables import ContainerTemplate

logger = logging.getLogger(__name__)


class TemplateCatalog:
    def __init__(self, builtins: list[TemplateSpec], images: dict[str, str]) -> None:
        unknown = sorted(set(images) - {template.name for template in builtins})
        if unknown:
            raise ConfigError(
                f"invalid setting templates.images: no built-in template is named {', '.join(unknown)}; "
                f"the built-in templates are {', '.join(sorted(template.name for template in builtins))}"
            )
        self._builtins = {
            template.name: msgspec.structs.replace(template, image=images.get(template.name, template.image), builtin=True)
            for template in builtins
        }

    # --- reads -------------------------------------------------------------------------------

    async def get(self, name: str, version: int | None = None) -> TemplateSpec:
        """Return a template, the latest version unless `version` names another; raise TemplateNotFound."""
        builtin = self._builtins.get(name)
        if builtin is not None:
            if version not in (None, builtin.version):
                raise TemplateNotFound(name, version)
            return builtin

        query = ContainerTemplate.select(ContainerTemplate.spec).where(
            (ContainerTemplate.name == name) & ContainerTemplate.deleted_at.is_null()
        )
        if version is not None:
            query = query.where(ContainerTemplate.version == version)
        row = await query.order_by(ContainerTemplate.version, ascending=False).first()
        if row is None:
            raise TemplateNotFound(name, version)
        return _decode(row["spec"])

    async def get_visible(self, caller: Caller, name: str, version: int | None = None) -> TemplateSpec:
        """Return a template the caller may use: a built-in, their own, or any for an admin.

        Another user's custom template raises TemplateNotFound, exactly like a missing one.
        """
        template = await self.get(name, version)
        if not visible_to(caller, template):
            raise TemplateNotFound(name, version)
        return template

    async def list(self, category: TemplateCategory | None = None, caller: Caller | None = None) -> list[TemplateSpec]:
        """Return the latest version of every template, built-ins first, each group sorted by name.

        With `caller`, only the templates that caller may see.
        """
        templates = sorted(self._builtins.values(), key=lambda template: template.name)
        rows = await (
            ContainerTemplate.select(ContainerTemplate.name, ContainerTemplate.spec)
            .where(ContainerTemplate.deleted_at.is_null())
            .order_by(ContainerTemplate.name)
            .order_by(ContainerTemplate.version, ascending=False)
        )
        latest: dict[str, TemplateSpec] = {}
        for row in rows:
            latest.setdefault(row["name"], _decode(row["spec"]))
        templates.extend(latest.values())
        if category is not None:
            templates = [template for template in templates if template.category == category]
        if caller is not None:
            templates = [template for template in templates if visible_to(caller, template)]
        return templates

    async def versions(self, name: str) -> list[int]:
        if name in self._builtins:
            return [self._builtins[name].version]
        rows = await ContainerTemplate.select(ContainerTemplate.version).where(
            (ContainerTemplate.name == name) & ContainerTemplate.deleted_at.is_null()
        )
        return sorted(row["version"] for row in rows)

    # --- changes -----------------------------------------------------------------------------

    async def create(self, caller: Caller, template: TemplateSpec) -> TemplateSpec:
        # NOTE: template names are shared by all users, so a name another user took is a conflict.
        # The conflict reveals that the name exists, but nothing else about that template.
        if template.name in self._builtins or await self._exists(template.name):
            raise Conflict(
                f"a template named {template.name!r} already exists; choose another name or update it with "
                f"PUT /api/runtime/templates/{template.name}",
                template=template.name,
                field="name",
            )
        # Versions keep counting across a delete, so a re-created template never reuses a version.
        previous = await ContainerTemplate.select(ContainerTemplate.version).where(ContainerTemplate.name == template.name).order_by(
            ContainerTemplate.version, ascending=False
        ).first()
        version = previous["version"] + 1 if previous else 1
        stored = msgspec.structs.replace(template, version=version, builtin=False, owner=caller.user)
        await self._insert(stored)
        logger.info("created template %s by %s", stored.name, caller.user)
        return stored

    async def update(self, caller: Caller, name: str, template: TemplateSpec) -> TemplateSpec:
        """Store `template` as the next version of `name`; earlier versions stay readable."""
        self._reject_builtin(name, "updated")
        current = await self.get_visible(caller, name)
        stored = msgspec.structs.replace(template, name=name, version=current.version + 1, builtin=False, owner=current.owner)
        await self._insert(stored)
        logger.info("updated template %s to version %s by %s", name, stored.version, caller.user)
        return stored

    async def delete(self, caller: Caller, name: str, force: bool) -> None:
        """Delete every version of a custom template, unless a pool or a live container uses it."""
        self._reject_builtin(name, "deleted")
        await self.get_visible(caller, name)
        users = await self._users(name)
        if users and not force:
            raise TemplateInUse(name, users)
        await ContainerTemplate.update({ContainerTemplate.deleted_at: datetime.now(timezone.utc)}).where(
            (ContainerTemplate.name == name) & ContainerTemplate.deleted_at.is_null()
        )
        logger.info("deleted template %s by %s (force=%s, in use by %s)", name, caller.user, force, users or "nothing")

    def is_builtin(self, name: str) -> bool:
        return name in self._builtins

    async def _users(self, name: str) -> list[str]:
        users = []
        if await Pool.exists().where(Pool.template == name):
            users.append(f"the pool of {name!r}")
        live = await Container.count().where(
            (Container.template == name) & Container.status.is_in(list(ACTIVE_STATUSES)) & Container.pool_state.is_null()
        )
        if live:
            users.append(f"{live} container(s)")
        return users

    def _reject_builtin(self, name: str, action: str) -> None:
        if name in self._builtins:
            raise Conflict(
                f"template {name!r} is built in and cannot be {action}; set templates.images to change its image, "
                "or create a custom template under another name",
                template=name,
            )

    async def _exists(self, name: str) -> bool:
        return await ContainerTemplate.exists().where(
            (ContainerTemplate.name == name) & ContainerTemplate.deleted_at.is_null()
        )

    async def _insert(self, template: TemplateSpec) -> None:
        """Store one version; a concurrent change that took the same version number is a conflict."""
        if await ContainerTemplate.exists().where(
            (ContainerTemplate.name == template.name) & (ContainerTemplate.version == template.version)
        ):
            raise _changed_concurrently(template.name)
        try:
            await self._save(template)
        except Exception as exc:
            if "unique" in str(exc).lower():
                raise _changed_concurrently(template.name) from exc
            raise

    async def _save(self, template: TemplateSpec) -> None:
        await ContainerTemplate(
            name=template.name,
            version=template.version,
            category=template.category,
            description=template.description,
            image=template.image,
            spec=msgspec.json.encode(template).decode(),
            owner=template.owner,
            builtin=False,
            created_at=datetime.now(timezone.utc),
        ).save()


def _changed_concurrently(name: str) -> Conflict:
    return Conflict(f"template {name!r} was changed by another request at the same time; retry", template=name)


def _decode(spec: str | dict) -> TemplateSpec:
    if isinstance(spec, str):
        return msgspec.json.decode(spec, type=TemplateSpec)
    return msgspec.convert(spec, TemplateSpec)


def visible_to(caller: Caller, template: TemplateSpec) -> bool:
    """Tell whether a caller may see a template: built-ins are for everyone, custom ones for their owner and admins."""
    return template.builtin or caller.is_admin or template.owner == caller.user
