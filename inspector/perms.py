"""One permission policy for every file the service writes, and clear errors without root.

The ban state (``bans.json``), its journal, the event log, the ``hosts.deny``
export and the control socket hold the addresses of every client the service
judged.  They are written with one mode (``[files] mode``): ``0600`` (root
only, the default) or ``0640`` with a group (``[files] group``, e.g. ``adm``)
whose members may then read the logs and state and ask the running service
(``inspector status``, ``bans``): the control socket gets ``0660`` for that
group, since connecting to a UNIX socket needs write permission.  The mode is
set on creation (never a moment world-readable) and enforced again on files
that exist (an older version wrote them ``0644``).

Example::

    [files]
    mode = "0640"
    group = "adm"
"""

from __future__ import annotations

import contextlib
import grp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FilePolicy", "NeedsRoot", "parse_files", "needs_root_message"]

_MODES = {"0600": 0o600, "0640": 0o640}


class NeedsRoot(PermissionError):
    """An operation needs root (or the ``[files] group``); the message says which and where."""


@dataclass(frozen=True)
class FilePolicy:
    """``mode`` for files; ``group``: the group that may read them (None: root's own group)."""

    mode: int = 0o600
    group: str | None = None

    @property
    def gid(self) -> int:
        """The group's id, or -1 (leave the group as it is)."""
        if self.group is None:
            return -1
        return grp.getgrnam(self.group).gr_gid

    @property
    def socket_mode(self) -> int:
        """The control socket's mode: connecting needs write permission, so a readable group gets rw."""
        return 0o660 if self.mode & 0o040 else 0o600

    def enforce(self, fd: int) -> None:
        """Set the mode and group on an open file (best effort for the group: not root, no chown)."""
        os.fchmod(fd, self.mode)
        if self.group is not None:
            with contextlib.suppress(PermissionError, KeyError):
                os.fchown(fd, -1, self.gid)

    def enforce_path(self, path: str | Path, mode: int | None = None) -> None:
        """Set the mode (default: the policy's) and group on ``path``."""
        os.chmod(path, self.mode if mode is None else mode)
        if self.group is not None:
            with contextlib.suppress(PermissionError, KeyError):
                os.chown(path, -1, self.gid)

    def open_append(self, path: str | Path) -> int:
        """Open ``path`` for appending (created with the policy's mode; an existing file gets it too)."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            self.enforce(fd)
        except OSError:
            os.close(fd)
            raise
        return fd


def parse_files(section: dict[str, Any], fail: Callable[[str, str], Exception]) -> FilePolicy:
    """The ``[files]`` section; ``fail(key, message)`` makes the error (it names ``file:line``)."""
    for key in section:
        if key not in ("mode", "group"):
            raise fail(key, "unknown key (known: group, mode)")
    mode_text = str(section.get("mode", "0600"))
    if mode_text not in _MODES:
        raise fail("mode", f"must be \"0600\" or \"0640\", not {mode_text!r}")
    group = section.get("group")
    if group is not None:
        if not isinstance(group, str) or not group:
            raise fail("group", "must be a group name such as \"adm\"")
        try:
            grp.getgrnam(group)
        except KeyError:
            raise fail("group", f"no group {group!r} on this host") from None
    if _MODES[mode_text] == 0o640 and group is None:
        raise fail("group", "mode \"0640\" needs a group (e.g. group = \"adm\")")
    return FilePolicy(_MODES[mode_text], group if _MODES[mode_text] == 0o640 else None)


def needs_root_message(what: str, path: str | Path, policy_hint: bool = True) -> str:
    """One line for an operator who is not root: what was refused, where, and what helps."""
    hint = " (run as root, or set [files] mode = \"0640\" and group = \"adm\" and join that group)" \
        if policy_hint else " (run as root)"
    return f"needs root: {what} {path}: permission denied{hint}"
