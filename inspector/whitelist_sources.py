"""Whitelist entries from files and host names (``[whitelist] files`` and ``hosts``).

fail2ban takes host names and ``file:`` lists in ``ignoreip``; sshguard a
whitelist file.  Here:

* a file holds one address or CIDR per line (``#`` starts a comment); it is
  re-read when it changes (size, mtime or inode) and on SIGHUP.  A file that
  cannot be read, or has a bad line, keeps its last good content and the
  problem is reported (``path:line: ...``); at start it is an error.
* a host name is resolved to its A and AAAA addresses at start and again every
  ``resolve_interval`` seconds.  A failed lookup keeps the host's last good
  answer and is reported; a host that never resolved contributes nothing.

:class:`WhitelistSources` computes the networks these contribute; the owner
(the service) merges them with ``[whitelist] cidrs`` into the one whitelist
and the kernel's whitelist sets.  Resolver, clock and file stat are injected.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["WhitelistSourceError", "WhitelistSources", "KernelWhitelist", "WHITE_SETS", "read_whitelist_file",
           "parse_whitelist_lines", "system_resolver", "valid_hostname", "Network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]
WHITE_SETS = ("inspector-white4", "inspector-white6")  # made by setup-nfqueue.sh (RETURN before any queueing)
MAX_ADDRESSES_PER_HOST = 64  # a round-robin name has a few; more is a misconfiguration or an attack
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class WhitelistSourceError(ValueError):
    """A whitelist file that cannot be used; the message names ``path:line``."""


def valid_hostname(name: str) -> bool:
    """True for an ASCII DNS name such as ``mx.example.org`` (IDNs must be given in A-label form)."""
    name = name[:-1] if name.endswith(".") else name
    return 0 < len(name) <= 253 and "." in name and all(_LABEL.fullmatch(p) for p in name.split("."))


def parse_whitelist_lines(lines: Iterable[str], origin: str) -> list[Network]:
    """The networks of a whitelist file's lines; raises :class:`WhitelistSourceError` naming ``origin:line``."""
    out: list[Network] = []
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise WhitelistSourceError(f"{origin}:{number}: not an address or network: {text[:80]!r}") from None
    return out


def read_whitelist_file(path: str | Path) -> list[Network]:
    """Read and parse one whitelist file (errors name ``path:line``; unreadable: ``path: why``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise WhitelistSourceError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise WhitelistSourceError(f"{path}: not valid UTF-8") from None
    return parse_whitelist_lines(text.splitlines(), str(path))


def system_resolver(host: str) -> list[str]:
    """A and AAAA addresses of ``host`` through the system resolver (``getaddrinfo``); raises OSError."""
    infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


@dataclass
class _File:
    path: str
    stamp: tuple[int, int, int, int] | None = None
    networks: tuple[Network, ...] = ()
    error: str | None = None


@dataclass
class _Host:
    name: str
    due: float = 0.0
    networks: tuple[Network, ...] = ()
    resolved_at: float | None = None
    error: str | None = None


@dataclass(eq=False)
class WhitelistSources:
    """The whitelist networks from ``files`` and ``hosts``, kept current by :meth:`refresh`.

    ``on_change(networks)`` is called (from the refreshing thread) with the full
    new set whenever it changes; ``emit`` gets ``whitelist_source_failed``
    events.  :meth:`start` runs :meth:`refresh` every ``check_every`` seconds.
    """

    files: InitVar[Sequence[str]]
    hosts: InitVar[Sequence[str]]
    resolver: Resolver
    clock: Callable[[], float]
    resolve_interval: float = 300.0
    on_change: Callable[[frozenset[Network]], None] | None = None
    emit: Callable[[dict[str, Any]], None] | None = None
    stat: Callable[[str], os.stat_result] = os.stat
    check_every: float = 2.0

    def __post_init__(self, files: Sequence[str], hosts: Sequence[str]) -> None:
        self._files = [_File(p) for p in dict.fromkeys(files)]
        self._hosts = [_Host(h) for h in dict.fromkeys(hosts)]
        self._lock = threading.Lock()
        self._current: frozenset[Network] = frozenset()
        self._force = threading.Event()
        self._stop = threading.Event()
        self.first_refresh = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    @property
    def has_hosts(self) -> bool:
        """Are there host names to resolve?"""
        return bool(self._hosts)

    @property
    def networks(self) -> frozenset[Network]:
        """The networks the files and hosts contribute now."""
        with self._lock:
            return self._current

    def load(self, resolve_hosts: bool = True) -> frozenset[Network]:
        """First load, at start: a broken file is an error (:class:`WhitelistSourceError`); hosts are resolved
        (a failed lookup is reported, not raised: the host contributes nothing until it resolves).
        ``resolve_hosts`` False leaves the lookups to the thread's first refresh (:meth:`start`), so a
        slow resolver cannot hold up the caller."""
        now = self.clock()
        for f in self._files:
            f.networks = tuple(read_whitelist_file(f.path))
            try:
                f.stamp = _stamp(self.stat(f.path))
            except OSError:
                f.stamp = None
        if resolve_hosts:
            for h in self._hosts:
                self._resolve(h, now)
        self._publish()
        return self.networks

    def reload(self) -> None:
        """SIGHUP: re-read every file and re-resolve every host at the next refresh (any thread)."""
        self._force.set()

    def refresh(self, now: float | None = None) -> bool:
        """Re-read changed files and re-resolve hosts that are due; True if the networks changed."""
        now = self.clock() if now is None else now
        force = self._force.is_set()
        self._force.clear()
        for f in self._files:
            self._refresh_file(f, force)
        for h in self._hosts:
            if force or now >= h.due:
                self._resolve(h, now)
        return self._publish()

    def _refresh_file(self, f: _File, force: bool) -> None:
        try:
            stamp = _stamp(self.stat(f.path))
        except OSError as e:
            self._fail(f, f"{f.path}: cannot read: {e.strerror or e}")
            return
        if stamp == f.stamp and not force:
            return
        try:
            f.networks = tuple(read_whitelist_file(f.path))
        except WhitelistSourceError as e:
            self._fail(f, str(e))  # keeps the last good content
            f.stamp = stamp  # reported once per change, not at every check
            return
        f.stamp, f.error = stamp, None

    def _resolve(self, h: _Host, now: float) -> None:
        h.due = now + self.resolve_interval
        try:
            addresses = list(self.resolver(h.name))
            if not addresses:
                raise OSError("no A or AAAA records")
            nets = tuple(dict.fromkeys(ipaddress.ip_network(a.split("%", 1)[0]) for a in addresses))
        except (OSError, ValueError, UnicodeError) as e:
            kept = f"; keeping {len(h.networks)} address(es) from the last answer" if h.networks else ""
            self._fail(h, f"{h.name}: lookup failed: {e}{kept}")
            return
        if len(nets) > MAX_ADDRESSES_PER_HOST:
            self._fail(h, f"{h.name}: {len(nets)} addresses, more than {MAX_ADDRESSES_PER_HOST}: answer ignored")
            return
        h.networks, h.resolved_at, h.error = nets, now, None

    def _fail(self, source: _File | _Host, error: str) -> None:
        if source.error == error:
            return
        source.error = error
        self.failures += 1
        if self.emit is not None:
            kind = "file" if isinstance(source, _File) else "host"
            self.emit({"event": "whitelist_source_failed", "kind": kind, "error": error})

    def _publish(self) -> bool:
        sources: list[_File | _Host] = [*self._files, *self._hosts]
        nets = frozenset(n for src in sources for n in src.networks)
        with self._lock:
            changed = nets != self._current
            self._current = nets
        if changed and self.on_change is not None:
            self.on_change(nets)
        return changed

    def status(self) -> dict[str, Any]:
        """The ``whitelist_sources`` section of ``inspector status``."""
        return {
            "networks": len(self.networks),
            "files": [{"path": f.path, "entries": len(f.networks), "error": f.error} for f in self._files],
            "hosts": [{"host": h.name, "addresses": [str(n.network_address) for n in h.networks],
                       "error": h.error} for h in self._hosts],
            "failures": self.failures,
        }

    def _run(self) -> None:
        first = True
        while True:
            if not first:
                self._force.wait(self.check_every)
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - the whitelist thread must survive a bug; the last set stays
                self.failures += 1
                if self.emit is not None:
                    self.emit({"event": "whitelist_source_failed", "kind": "internal", "error": repr(e)})
            if first:
                first = False
                self.first_refresh.set()

    def start(self) -> None:
        """Refresh in a daemon thread: at once (``first_refresh`` is set when that is done), then every
        ``check_every`` seconds and at once after :meth:`reload`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="whitelist-sources", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._force.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class SetEditor(Protocol):
    """What :class:`KernelWhitelist` needs of :class:`inspector.ipset_netlink.IpsetNetlink`."""

    def add_entry(self, set_name: str, network: str, net: bool = True) -> bool: ...
    def delete(self, set_name: str, network: str, net: bool) -> bool: ...


class KernelWhitelist:
    """Keeps the kernel whitelist sets (``inspector-white4``/``6``) holding the file and host networks.

    Only entries this class added are ever removed: an entry that was already in a set (the
    setup script's ``--whitelist``) is left alone, also when it leaves the files.  What it
    added is remembered in ``state`` (a JSON list), so entries of a previous run that are no
    longer listed are removed at the next start.  Errors (no such set: the setup script was
    not run) are returned, never raised.
    """

    def __init__(self, editor: SetEditor, state: Path | None, names: tuple[str, str] = WHITE_SETS) -> None:
        self.editor = editor
        self.state = state
        self.names = names
        self.owned: set[str] = set()
        if state is not None:
            try:
                self.owned = {str(ipaddress.ip_network(n)) for n in json.loads(state.read_text())}
            except (OSError, ValueError, TypeError):
                self.owned = set()

    def sync(self, networks: Iterable[Network]) -> list[str]:
        """Make the sets hold ``networks`` (plus what others put there); the errors, if any."""
        want = {str(n) for n in networks}
        errors: list[str] = []
        for text in sorted(want - self.owned):
            name = self.names[0 if ipaddress.ip_network(text).version == 4 else 1]
            try:
                if self.editor.add_entry(name, text, True):
                    self.owned.add(text)
            except OSError as e:
                errors.append(f"cannot add {text} to ipset {name}: {e}")
        for text in sorted(self.owned - want):
            name = self.names[0 if ipaddress.ip_network(text).version == 4 else 1]
            try:
                self.editor.delete(name, text, True)
                self.owned.discard(text)
            except OSError as e:
                errors.append(f"cannot remove {text} from ipset {name}: {e}")
        self._save()
        return errors

    def _save(self) -> None:
        if self.state is None:
            return
        try:
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps(sorted(self.owned)))
            os.replace(tmp, self.state)
        except OSError:
            pass  # next start then cannot remove stale entries of this run; the sets still hold the right ones
