"""Live events: what happened to a container, a metric sample, an alert change.

Events travel on a bus (corebase.events.bus) to WebSocket clients. The bus is in-process by
default and Redis when `redis.url` is set, so a client of one API process receives events
that another process caused.
"""

from corebase.events.bus import EventBus
from corebase.events.types import CHANNELS, Event, EventFilter, channel_of

__all__ = ["CHANNELS", "Event", "EventBus", "EventFilter", "channel_of"]
