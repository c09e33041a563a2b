"""CoreBase's built-in templates, registered as an ordinary plugin.

Images are pinned to a tag, never `latest`. Set `templates.images` to point any of them at another
image, for example a mirror in your own registry.
"""

from __future__ import annotations

from corebase import hookimpl
from corebase.settings import Settings
from corebase.templates import TemplateSpec
from corebase_templates.builtin import BUILTIN_TEMPLATES


@hookimpl(trylast=True)
def corebase_templates(settings: Settings) -> list[TemplateSpec]:
    return list(BUILTIN_TEMPLATES)
