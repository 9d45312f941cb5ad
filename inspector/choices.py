"""One check for a setting that takes one of a few words (``mode``, ``[stream] decide``,
``[notify] report``), shared by the config parsers without importing ``config``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["one_of"]


def one_of(section: dict[str, Any], key: str, allowed: tuple[str, ...], out: dict[str, Any],
           fail: Callable[[str], Exception], default: str | None = None) -> None:
    """Copy ``section[key]`` (or ``default`` when it is absent and given) into ``out[key]`` if it is
    one of ``allowed``; else raise ``fail(message)``, the message naming the allowed words."""
    if key not in section and default is None:
        return
    value = section.get(key, default)
    if value not in allowed:
        words = " or ".join(f"'{a}'" for a in allowed)
        raise fail(f"must be {words}, not {value!r}")
    out[key] = value
