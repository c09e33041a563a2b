"""Piccolo's configuration module (PICCOLO_CONF=corebase.piccolo_conf).

`DB` starts empty: `corebase.db.connect` sets it from the settings, because the database URL is
only known once settings are loaded. Piccolo's migration commands read it from here.
"""

from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine

DB: Engine | None = None

APP_REGISTRY = AppRegistry(apps=["corebase.piccolo_app"])
