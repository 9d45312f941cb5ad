"""The side components the config asks for, built for the process that owns the ban store.

:func:`configured` is the one place where a component is wired in: one ``if`` per component,
reading its own config section and taking what it needs: the ban pipeline (``bans.issue``
from any thread, ``bans.add_listener``), the event sink, the control server (to register its
own requests) and the clock.  Each component follows :class:`inspector.service.Component`:
``start()``, ``close()``, ``status() -> dict``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Config
from ..control import ControlServer
from ..events import EventSink
from ..respond.bans import BanPipeline
from . import Component

__all__ = ["configured"]


def configured(config: Config, bans: BanPipeline, events: EventSink, control: ControlServer,
               clock: Callable[[], float]) -> dict[str, Component]:
    """The components ``config`` enables, by the name of their ``status`` section (none yet:
    the MTA policy server, the fleet client, the connection-limit poller and the notifier
    add themselves here)."""
    found: dict[str, Component] = {}
    return found
