"""Where a ``[[logs.source]]`` reads from, and whether it can read there now.

:func:`resolve` turns a source's ``backend`` into one place: a file path or
journal matches (``auto``: the file when it exists, else the journal when
there are matches, else the file, waited for).  :func:`probe` says why a
place cannot be read now -- a missing file, no journal binding or files, a
unit neither installed nor ever seen in the journal -- for ``inspector
check``.  Nothing here raises.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .filters import BUILTIN
from .journal import JOURNAL_MISSING, journal_available, parse_matches
from .settings import LogSettings, LogSource

__all__ = ["Place", "SourceProblem", "cursor_path", "probe", "probe_all", "resolve"]

# where systemd looks for unit files (systemd.unit(5), "System Unit Search Path")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")


@dataclass(frozen=True)
class Place:
    """What a source reads: ``kind`` "file" (``path``) or "journal" (``matches``, in ``directory`` or the system's)."""

    kind: str
    path: str | None = None
    matches: tuple[str, ...] = ()
    directory: str | None = None

    @property
    def key(self) -> str:
        """One follower per key: sources reading the same place share it."""
        if self.kind == "file":
            return str(self.path)
        return "journal:" + (f"{self.directory}:" if self.directory else "") + ",".join(self.matches)


@dataclass(frozen=True)
class SourceProblem:
    """Why ``source`` cannot be read now (``where``: the file or journal matches)."""

    source: str
    where: str
    reason: str


def resolve(src: LogSource, settings: LogSettings, exists: bool | None = None) -> Place:
    """The place ``src`` reads (``exists``: whether its file exists; default: look)."""
    matches = src.journal or (BUILTIN[src.filter].journal_matches if src.filter in BUILTIN else ())
    journal = Place("journal", None, matches, settings.journal_directory)
    if src.backend == "journal" or (src.backend == "auto" and src.path is None):
        return journal
    if src.backend == "file" or not matches:
        return Place("file", src.path)
    if exists is None:
        exists = src.path is not None and os.path.exists(src.path)
    return Place("file", src.path) if exists else journal


def cursor_path(directory: Path, place: Place) -> Path:
    """The file that keeps ``place``'s journal cursor across restarts."""
    return directory / f"journal-{hashlib.sha256(place.key.encode()).hexdigest()[:16]}.cursor"


def _units(matches: tuple[str, ...]) -> list[str]:
    return [m.split("=", 1)[1] for group in parse_matches(matches) for m in group if m.startswith("_SYSTEMD_UNIT=")]


def _unit_installed(unit: str) -> bool:
    names = [unit]
    if "@" in unit:  # an instance: postfix@-.service comes from the template postfix@.service
        head, _, rest = unit.partition("@")
        names.append(f"{head}@.{rest.rsplit('.', 1)[-1]}")
    if any(os.path.exists(os.path.join(d, n)) for d in UNIT_DIRS for n in names):
        return True
    # a SysV script becomes NAME.service through systemd-sysv-generator (Debian's exim4)
    return unit.endswith(".service") and os.path.exists(os.path.join("/etc/init.d", unit[:-len(".service")]))


def probe(src: LogSource, settings: LogSettings) -> SourceProblem | None:
    """None when ``src`` can be read now, else what is wrong."""
    place = resolve(src, settings)
    if place.kind == "file":
        path = str(place.path)
        if not os.path.exists(path):
            why = "" if src.backend == "file" else "; no journal matches to fall back to"
            return SourceProblem(src.name, path, f"missing file (waited for{why})")
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            return SourceProblem(src.name, path, f"cannot read: {e.strerror or e}")
        return None
    where = "journal " + (f"in {place.directory} " if place.directory else "") + ",".join(place.matches)
    if not journal_available():
        return SourceProblem(src.name, where, JOURNAL_MISSING)
    from systemd import journal

    if place.directory is not None:
        if not os.path.isdir(place.directory):
            return SourceProblem(src.name, where, f"no directory {place.directory}")
        if not any(p.suffix in (".journal", ".journal~") for p in Path(place.directory).iterdir()):
            return SourceProblem(src.name, where, f"no journal files in {place.directory}")
    try:
        reader = journal.Reader(path=place.directory) if place.directory else journal.Reader()
    except OSError as e:
        return SourceProblem(src.name, where, f"cannot open the journal: {e.strerror or e}")
    try:
        if place.directory is None and not (reader.has_runtime_files() or reader.has_persistent_files()):
            return SourceProblem(src.name, where, "no journal files (is systemd-journald running, can this user "
                                                  "read them: root or the systemd-journal group?)")
        units = _units(place.matches)
        if units:
            seen = reader.query_unique("_SYSTEMD_UNIT")
            if not any(u in seen or _unit_installed(u) for u in units):
                return SourceProblem(src.name, where, f"unknown unit {' / '.join(units)}: not installed, "
                                                      "never in the journal")
    except OSError as e:
        return SourceProblem(src.name, where, f"cannot read the journal: {e.strerror or e}")
    finally:
        reader.close()
    return None


def probe_all(settings: LogSettings) -> list[SourceProblem]:
    """Every source that cannot be read now."""
    return [p for src in settings.sources if (p := probe(src, settings)) is not None]
