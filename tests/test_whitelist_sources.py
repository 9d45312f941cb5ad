"""``[whitelist] files`` and ``hosts``: parsing, change detection, SIGHUP, resolution, failures kept."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.config import ConfigError, load_config
from inspector.whitelist_sources import (
    MAX_ADDRESSES_PER_HOST,
    WhitelistSourceError,
    WhitelistSources,
    parse_whitelist_lines,
    system_resolver,
    valid_hostname,
)


def nets(*texts: str) -> frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return frozenset(ipaddress.ip_network(t) for t in texts)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeDNS:
    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Exception] = {}
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        a = self.answers.get(host, OSError("Name or service not known"))
        if isinstance(a, Exception):
            raise a
        return a


def test_file_lines_comments_and_both_families() -> None:
    got = parse_whitelist_lines(["# office", "198.51.100.7", "203.0.113.0/24  # branch", "", "2001:db8:5::/48",
                                 "2001:db8::1", "192.0.2.77/24"], "wl.txt")
    assert [str(n) for n in got] == ["198.51.100.7/32", "203.0.113.0/24", "2001:db8:5::/48", "2001:db8::1/128",
                                     "192.0.2.0/24"]
    with pytest.raises(WhitelistSourceError, match=r"^wl.txt:3: not an address or network: 'mx.example.org'"):
        parse_whitelist_lines(["198.51.100.7", "", "mx.example.org"], "wl.txt")


@pytest.mark.parametrize("name,ok", [("mx.example.org", True), ("mx.example.org.", True), ("localhost", False),
                                     ("-bad.example.org", False), ("a..b", False), ("xn--bcher-kva.example", True),
                                     ("bücher.example", False), ("198.51.100.7", True), ("", False)])
def test_host_names(name: str, ok: bool) -> None:
    assert valid_hostname(name) is ok


def _cfg(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "inspector.toml"
    p.write_text(body)
    return p


def test_config_keys_and_errors(tmp_path: Path) -> None:
    (tmp_path / "wl.txt").write_text("198.51.100.7\n2001:db8:5::/48\n")
    cfg = load_config(_cfg(tmp_path, '[whitelist]\ncidrs = ["127.0.0.0/8"]\nfiles = ["wl.txt"]\n'
                                     'hosts = ["mx.example.org"]\nresolve_interval = 60\n'))
    assert cfg.whitelist_files == (str(tmp_path / "wl.txt"),)
    assert cfg.whitelist_hosts == ("mx.example.org",) and cfg.whitelist_resolve == 60.0
    (tmp_path / "bad.txt").write_text("198.51.100.7\nnot-an-address\n")
    for body, line, words in (
        ('[whitelist]\nfiles = ["bad.txt"]\n', 2, f"{tmp_path / 'bad.txt'}:2: not an address"),
        ('[whitelist]\n\nfiles = ["missing.txt"]\n', 3, "cannot read"),
        ('[whitelist]\nhosts = ["mx.example.org", "not a name"]\n', 2, "not a host name: 'not a name'"),
        ('[whitelist]\nresolve_interval = 1\n', 2, "between 10"),
        ('[whitelist]\nhostnames = ["x.example"]\n', 2, "unknown setting"),
    ):
        path = _cfg(tmp_path, body)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(e.value).startswith(f"{path}:{line}: whitelist."), e.value
        assert words in str(e.value), e.value


def test_check_prints_the_sources(tmp_path: Path) -> None:
    (tmp_path / "wl.txt").write_text("198.51.100.7\n")
    path = _cfg(tmp_path, '[whitelist]\nfiles = ["wl.txt"]\nhosts = ["mx.example.org"]\n')
    out = subprocess.run([sys.executable, "-m", "inspector", "check", "--config", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert f"whitelist files: {tmp_path / 'wl.txt'} (1 entries)" in out
    assert "whitelist hosts: mx.example.org (resolved every 300s)" in out


def test_file_changes_are_picked_up_and_a_broken_edit_keeps_the_last_good(tmp_path: Path) -> None:
    f = tmp_path / "wl.txt"
    f.write_text("198.51.100.7\n")
    changes: list[frozenset[object]] = []
    events: list[dict[str, object]] = []
    src = WhitelistSources([str(f)], [], FakeDNS(), Clock(), on_change=changes.append, emit=events.append)
    assert src.load() == nets("198.51.100.7/32")
    assert not src.refresh()  # nothing changed
    f.write_text("198.51.100.7\n2001:db8:5::/48\n")
    assert src.refresh()
    assert src.networks == nets("198.51.100.7/32", "2001:db8:5::/48") and changes[-1] == src.networks
    f.write_text("198.51.100.8\nbroken line\n")
    assert not src.refresh()  # the broken file keeps its last good content
    assert src.networks == nets("198.51.100.7/32", "2001:db8:5::/48")
    assert events == [{"event": "whitelist_source_failed", "kind": "file", "error": f"{f}:2: not an address or "
                       "network: 'broken line'"}]
    src.refresh()
    assert len(events) == 1  # reported once, not at every check
    assert src.status()["files"][0]["error"].startswith(f"{f}:2")
    f.write_text("198.51.100.8\n")
    assert src.refresh() and src.networks == nets("198.51.100.8/32")
    assert src.status()["files"][0]["error"] is None
    f.unlink()
    assert not src.refresh() and src.networks == nets("198.51.100.8/32")  # a vanished file keeps its entries
    assert "cannot read" in str(events[-1]["error"])


def test_sighup_rereads_a_file_whose_stamp_did_not_change(tmp_path: Path) -> None:
    f = tmp_path / "wl.txt"
    f.write_text("198.51.100.1\n")
    st = f.stat()
    src = WhitelistSources([str(f)], [], FakeDNS(), Clock())
    src.load()
    with open(f, "r+") as fh:  # same inode, same size, mtime put back: invisible to the stamp
        fh.write("198.51.100.2\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not src.refresh()
    src.reload()
    assert src.refresh() and src.networks == nets("198.51.100.2/32")


def test_hosts_resolve_both_families_and_re_resolve_periodically() -> None:
    dns, clock = FakeDNS(), Clock()
    dns.answers["mx.example.org"] = ["198.51.100.25", "2001:db8::25"]
    events: list[dict[str, object]] = []
    src = WhitelistSources([], ["mx.example.org", "gone.example.org"], dns, clock, resolve_interval=300,
                           emit=events.append)
    assert src.load() == nets("198.51.100.25/32", "2001:db8::25/128")  # the failed host contributes nothing
    assert events[0]["kind"] == "host" and "gone.example.org: lookup failed" in str(events[0]["error"])
    dns.answers["mx.example.org"] = ["198.51.100.26"]
    clock.t += 299
    assert not src.refresh()  # not due yet
    clock.t += 2
    assert src.refresh() and src.networks == nets("198.51.100.26/32")
    # a failure keeps the last good answer, and is reported
    dns.answers["mx.example.org"] = OSError("Temporary failure in name resolution")
    clock.t += 301
    assert not src.refresh() and src.networks == nets("198.51.100.26/32")
    assert "keeping 1 address(es)" in str(events[-1]["error"])
    assert src.status()["hosts"][0] == {"host": "mx.example.org", "addresses": ["198.51.100.26"],
                                        "error": events[-1]["error"]}
    dns.answers["mx.example.org"] = []  # an empty answer is a failure too
    clock.t += 301
    assert not src.refresh() and src.networks == nets("198.51.100.26/32")
    dns.answers["mx.example.org"] = [f"198.51.100.{i}" for i in range(MAX_ADDRESSES_PER_HOST + 1)]
    clock.t += 301
    assert not src.refresh() and "more than" in str(events[-1]["error"])
    # SIGHUP re-resolves at once
    dns.answers["mx.example.org"] = ["198.51.100.27"]
    src.reload()
    assert src.refresh() and src.networks == nets("198.51.100.27/32")


def test_the_thread_refreshes_and_reload_is_prompt(tmp_path: Path) -> None:
    f = tmp_path / "wl.txt"
    f.write_text("198.51.100.1\n")
    seen: list[frozenset[object]] = []
    src = WhitelistSources([str(f)], [], FakeDNS(), time.time, on_change=seen.append, check_every=60)
    src.load()
    src.start()
    try:
        f.write_text("198.51.100.9\n")
        src.reload()  # the 60 s check interval is not waited for
        deadline = time.monotonic() + 5
        while src.networks != nets("198.51.100.9/32") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.networks == nets("198.51.100.9/32")
    finally:
        src.close()


def test_system_resolver_answers_from_the_hosts_file() -> None:
    try:
        got = system_resolver("localhost")
    except OSError as e:
        pytest.skip(f"no resolver for localhost here: {e}")
    assert set(got) & {"127.0.0.1", "::1"}
