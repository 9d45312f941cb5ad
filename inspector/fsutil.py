"""Files that are replaced whole: written aside, synced, renamed over the old one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o600, encoding: str = "utf-8", gid: int = -1) -> None:
    """Replace ``path`` with ``text``: a crash leaves the old file or the new one, never half of one.
    The new file has ``mode`` and, unless ``gid`` is -1, that group (see :mod:`inspector.perms`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if gid != -1:
            with contextlib.suppress(PermissionError):
                os.chown(tmp, -1, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
