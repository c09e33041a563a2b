"""The `jsonl` alert notifier: appends each alert change as one JSON line to a file.

A rule names it as ``{"type": "jsonl", "file": "alerts.jsonl"}``. The plugin sets the directory
the file lives in. A rule picks only the file name, so its owner cannot write anywhere else on
the server. A log shipper or a script can follow the file.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from corebase.alerts.notifiers import DeliveryResult, InvalidNotifierConfig, Notification

# A plain file name: letters, digits, dots, dashes and underscores, not starting with a dot.
FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")


class JsonLinesNotifier:
    name = "jsonl"
    # Nothing in an entry is secret, so the API returns entries as they were saved.
    secret_fields: tuple[str, ...] = ()

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        for key in config:
            if key not in ("type", "file"):
                raise InvalidNotifierConfig(key, f"unknown field {key!r}; a jsonl entry takes type and file")
        file = config.get("file")
        if not isinstance(file, str) or not FILE_NAME.match(file):
            raise InvalidNotifierConfig(
                "file",
                f"file {file!r} is not a plain file name; use letters, digits, '.', '-' and '_', "
                "such as 'alerts.jsonl'",
            )
        return {"type": self.name, "file": file}

    async def send(self, notification: Notification, config: dict[str, Any]) -> DeliveryResult:
        path = self.directory / config["file"]
        line = msgspec.json.encode(
            {
                "deliveryId": notification.delivery_id,
                "sentAt": datetime.now(timezone.utc),
                "transition": notification.transition,
                "alert": notification.alert,
                "rule": notification.rule,
            }
        )
        try:
            # File writes block, so they run in a worker thread, off the event loop.
            await asyncio.to_thread(self._append, path, line + b"\n")
        except OSError as exc:
            return DeliveryResult(ok=False, target=str(path), error=f"writing {path} failed: {exc}")
        return DeliveryResult(ok=True, target=str(path))

    def _append(self, path: Path, line: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.write(line)
