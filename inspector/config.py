"""Configuration: a TOML file parsed once into a frozen :class:`Config`.

Every setting has a default, so no file is needed.  Errors name the file, the
line where the offending key stands, and what is wrong; an unknown section or key
is an error too.

Over 400 lines, on purpose: each section is one frozen dataclass and one parser
block, kept side by side so that a setting and its checks read together.  A new
section may live in its own module (dataclass + parser) with a one-line hook in
:func:`_from_dict`, as ``[logs]`` does.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .choices import one_of
from .connlimit import CONNLIMIT_KEYS, ConnLimitSettings, parse_connlimit
from .detect.smtp import SMTP_KEYS, SmtpSettings, parse_smtp_section
from .fleet_format import FleetSettings, parse_fleet
from .logs.settings import LogFilter, LogSettings, LogSource, parse_logs
from .nets import parse_networks
from .notify import NOTIFY_KEYS, NotifySettings, parse_notify
from .perms import FilePolicy, parse_files
from .policy.settings import KEYS as POLICY_KEYS
from .policy.settings import PolicySettings, parse_policy
from .rules import DOMAIN, PAYLOAD, SCOPES, RuleFile

__all__ = ["Config", "ConfigError", "LogFilter", "LogSettings", "LogSource", "MetricsSettings", "RateRule",
           "ServiceSettings", "load_config", "DEFAULT_RULES"]

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names ``file:line``."""


@dataclass(frozen=True)
class RateRule:
    """More than ``limit`` new connections within ``window`` seconds → rate verdict."""

    ports: tuple[int, ...] | None = None  # None: every protected port
    limit: int = 4
    window: float = 60.0
    ban: int = 86400


@dataclass(frozen=True)
class ServiceSettings:
    """What ``inspector run`` needs beyond the engine (the ``[service]`` section)."""

    queue: int = 0
    queue_maxlen: int = 4096
    fail_open: bool = True
    state_file: str = "/var/lib/inspector/bans.json"
    events: str = "/var/log/inspector/events.jsonl"  # or "-" for stdout
    syslog: bool = True
    control_socket: str = "/run/inspector/control.sock"
    ipset_v4: str = "inspector-ban4"
    ipset_v6: str = "inspector-ban6"
    maxelem: int = 1_000_000
    mark: int = 0x40000000  # packet/connection mark bit for decided flows (setup-nfqueue.sh --mark)
    body_mark: int = 0x20000000  # mark bit for SMTP flows inside a DATA body (setup-nfqueue.sh --body-mark)
    reply_mark: int = 0x10000000  # mark bit for SMTP flows whose server replies are queued (--reply-mark)
    workers: int = 0  # queues queue..queue+workers-1; 0: as many as the installed rules use


@dataclass(frozen=True)
class MetricsSettings:
    """The ``[metrics]`` section: ``listen = "host:port"`` serves Prometheus metrics ("" = off;
    an empty host is 127.0.0.1; IPv6 as ``"[::1]:9478"``)."""

    listen: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration, frozen: engine settings at the top level, and one settings object per section
    (``service``, ``logs``, ``metrics``). ``decide`` is the ``[stream] decide`` value: when a flow is bypassed (see
    :data:`inspector.verdict.BYPASS`).
    """
    mode: str = "enforce"  # or "alert"
    smtp_ports: tuple[int, ...] = (25,)
    other_ports: tuple[int, ...] = (22,)
    depth: int = 4096
    # when a flow is decided (no more of it is queued): "depth" = after `depth` bytes, STARTTLS or
    # QUIT; "early" = also at DATA/BDAT (SMTP) and after the first line (other ports: the SSH banner)
    decide: str = "early"
    max_flows: int = 262144
    flow_idle: float = 600.0
    rates: tuple[RateRule, ...] = (RateRule(),)
    rate_capacity: int = 1_000_000
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    ban_domain: int = 86400
    ban_payload: int = 86400
    ban_flags: int = 0
    whitelist: tuple[Network, ...] = ()
    whitelist_files: tuple[str, ...] = ()  # [whitelist] files: one address/CIDR per line (whitelist_sources.py)
    whitelist_hosts: tuple[str, ...] = ()  # [whitelist] hosts: A and AAAA, re-resolved
    whitelist_resolve: float = 300.0  # [whitelist] resolve_interval, seconds
    rules: tuple[RuleFile, ...] = ()
    service: ServiceSettings = ServiceSettings()
    logs: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    files: FilePolicy = FilePolicy()  # [files]: the mode and group of every file the service writes
    fleet: FleetSettings = FleetSettings()  # off unless [fleet] url is set
    notify: NotifySettings | None = None  # [notify]; None: no notifications
    connlimit: ConnLimitSettings | None = None  # [connlimit]; None: no cap on concurrent connections
    policy: PolicySettings = PolicySettings()  # [policy]: the MTA policy service (inspector/policy/)
    smtp: SmtpSettings = SmtpSettings()  # how the protected MTA reads SMTP ([smtp], detect/smtp.py)
    source: str | None = None  # the file this came from

    @property
    def ports(self) -> tuple[int, ...]:
        """Every protected port, SMTP first, without repeats."""
        return tuple(dict.fromkeys(self.smtp_ports + self.other_ports))

    @property
    def alert(self) -> bool:
        """Alert mode: report what would be done, accept everything."""
        return self.mode == "alert"

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with these fields replaced (e.g. ``mode="alert"``)."""
        return replace(self, **changes)


_KNOWN: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"mode": str},
    "ports": {"smtp": list, "other": list},
    "stream": {"depth": int, "decide": str},
    "smtp": dict(SMTP_KEYS),
    "flows": {"max": int, "idle_timeout": (int, float)},
    "rate": {"limit": int, "window": (int, float), "capacity": int, "ipv4_prefix": int, "ipv6_prefix": int,
             "ports": list, "ban": int, "rules": list},
    "bans": {"domain": int, "payload": int, "tcp_flags": int},
    "whitelist": {"cidrs": list, "files": list, "hosts": list, "resolve_interval": (int, float)},
    "service": {"queue": int, "queue_maxlen": int, "fail_open": bool, "state_file": str, "events": str,
                "syslog": bool, "control_socket": str, "ipset_v4": str, "ipset_v6": str, "maxelem": int,
                "mark": int, "body_mark": int, "reply_mark": int, "workers": int},
    "metrics": {"listen": str},
    "files": {"mode": str, "group": str},  # inspector/perms.py
    "logs": {},  # checked by inspector.logs.settings.parse_logs
    "fleet": {},  # checked by inspector.fleet.parse_fleet
    "notify": NOTIFY_KEYS,
    "connlimit": CONNLIMIT_KEYS,
    "policy": POLICY_KEYS,
}


class _Locator:
    """Find the line of ``[table] key`` in the TOML text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line(self, table: str, key: str | None = None) -> int | None:
        current = ""
        for number, raw in enumerate(self.lines, 1):
            s = raw.strip()
            m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", s)
            if m:
                current = m.group(1)
                if key is None and current == table:
                    return number
                continue
            if key is not None and current == table and re.match(rf"^{re.escape(key)}\s*=", s):
                return number
        return None

    def nth(self, table: str, index: int, key: str | None = None) -> int | None:
        """The line of ``key`` in the ``index``-th (0-based) ``[[table]]``, else of that header."""
        seen = -1
        header = None
        for number, raw in enumerate(self.lines, 1):
            s = raw.strip()
            m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", s)
            if m:
                if header is not None:
                    break  # the entry ended without the key
                if m.group(1) == table:
                    seen += 1
                    if seen == index:
                        header = number
                continue
            if header is not None and key is not None and re.match(rf"^{re.escape(key)}\s*=", s):
                return number
        return header


def load_config(path: str | Path | None = None, rules: str | Path | None = None) -> Config:
    """Load ``path`` (or the defaults) and resolve rule files.

    ``rules`` (a file or directory, as ``--rules``) replaces the rule files the
    config names; without either, the shipped ``rules/`` directory is used.
    """
    from .rules import RuleError, rule_files_in

    if path is None:
        cfg = Config()
        base = Path.cwd()
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not valid UTF-8") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            where = f"{p}:{m.group(1)}" if m else str(p)
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
            raise ConfigError(f"{where}: invalid TOML: {msg}") from None
        cfg = _from_dict(data, p, _Locator(text))
        base = p.parent
    if rules is not None:
        try:
            files = tuple(rule_files_in(Path(rules)))
        except RuleError as e:
            raise ConfigError(str(e)) from None
        cfg = replace(cfg, rules=files)
    elif not cfg.rules:
        cfg = replace(cfg, rules=tuple(rule_files_in(DEFAULT_RULES)) if DEFAULT_RULES.is_dir() else ())
    else:
        cfg = replace(cfg, rules=tuple(
            RuleFile(rf.path if rf.path.is_absolute() else base / rf.path, rf.scope, rf.ports) for rf in cfg.rules))
    return cfg


def _from_dict(data: dict[str, Any], path: Path, where: _Locator) -> Config:
    def fail(table: str, key: str | None, msg: str) -> ConfigError:
        line = where.line(table, key) or where.line(table) or 0
        loc = f"{path}:{line}" if line else str(path)
        name = f"{table}.{key}" if table and key else (key or table)
        return ConfigError(f"{loc}: {name}: {msg}")

    # unknown keys and wrong types, everywhere
    for key, value in data.items():
        if isinstance(value, dict) and key not in _KNOWN:
            raise fail(key, None, f"unknown section (known: {', '.join(sorted(k for k in _KNOWN if k))})")
        if key in ("rules", "logs", "fleet"):
            continue
        if isinstance(value, dict) and key in _KNOWN:
            for sub, v in value.items():
                _check_type(key, sub, v, fail)
        elif not isinstance(value, dict):
            _check_type("", key, value, fail)

    cfg: dict[str, Any] = {"source": str(path)}
    one_of(data, "mode", ("enforce", "alert"), cfg, lambda m: fail("", "mode", m), default="enforce")

    ports = data.get("ports", {})
    for key, name in (("smtp", "smtp_ports"), ("other", "other_ports")):
        if key in ports:
            cfg[name] = tuple(_port_list(ports[key], lambda msg, k=key: fail("ports", k, msg)))

    stream = data.get("stream", {})
    if "depth" in stream:
        cfg["depth"] = _bounded(stream["depth"], 64, 1 << 20, lambda m: fail("stream", "depth", m))
    one_of(stream, "decide", ("depth", "early"), cfg, lambda m: fail("stream", "decide", m))
    if "smtp" in data:
        try:
            cfg["smtp"] = parse_smtp_section(data["smtp"])
        except (KeyError, ValueError) as e:
            raise fail("smtp", str(e.args[0]).split(":")[0], str(e.args[0])) from None
    flows = data.get("flows", {})
    if "max" in flows:
        cfg["max_flows"] = _bounded(flows["max"], 16, 50_000_000, lambda m: fail("flows", "max", m))
    if "idle_timeout" in flows:
        cfg["flow_idle"] = float(_bounded(flows["idle_timeout"], 1, 86400, lambda m: fail("flows", "idle_timeout", m)))

    rate = data.get("rate", {})
    if "capacity" in rate:
        cfg["rate_capacity"] = _bounded(rate["capacity"], 1, 100_000_000, lambda m: fail("rate", "capacity", m))
    if "ipv4_prefix" in rate:
        cfg["ipv4_prefix"] = _bounded(rate["ipv4_prefix"], 8, 32, lambda m: fail("rate", "ipv4_prefix", m))
    if "ipv6_prefix" in rate:
        cfg["ipv6_prefix"] = _bounded(rate["ipv6_prefix"], 16, 128, lambda m: fail("rate", "ipv6_prefix", m))
    base_rule = RateRule(
        ports=tuple(_port_list(rate["ports"], lambda m: fail("rate", "ports", m))) if "ports" in rate else None,
        limit=_bounded(rate.get("limit", 4), 0, 1_000_000, lambda m: fail("rate", "limit", m)),
        window=float(_bounded(rate.get("window", 60), 0.001, 86400 * 7, lambda m: fail("rate", "window", m))),
        ban=_ban(rate.get("ban", 86400), lambda m: fail("rate", "ban", m)),
    )
    rules = [base_rule]
    for i, extra in enumerate(rate.get("rules", [])):
        if not isinstance(extra, dict):
            raise fail("rate", "rules", f"entry {i + 1} must be a table like {{ports = [25], limit = 20, window = 60}}")
        unknown = set(extra) - {"ports", "limit", "window", "ban"}
        if unknown:
            raise fail("rate", "rules", f"entry {i + 1}: unknown key {sorted(unknown)[0]!r}")
        if "ports" not in extra:
            raise fail("rate", "rules", f"entry {i + 1}: 'ports' is required")
        rules.insert(0, RateRule(
            ports=tuple(_port_list(extra["ports"], lambda m: fail("rate", "rules", m))),
            limit=_bounded(extra.get("limit", base_rule.limit), 0, 1_000_000, lambda m: fail("rate", "rules", m)),
            window=float(_bounded(extra.get("window", base_rule.window), 0.001, 86400 * 7,
                                  lambda m: fail("rate", "rules", m))),
            ban=_ban(extra.get("ban", base_rule.ban), lambda m: fail("rate", "rules", m)),
        ))
    cfg["rates"] = tuple(rules)

    bans = data.get("bans", {})
    for key, name in (("domain", "ban_domain"), ("payload", "ban_payload"), ("tcp_flags", "ban_flags")):
        if key in bans:
            cfg[name] = _ban(bans[key], lambda m, k=key: fail("bans", k, m))

    try:
        cfg["whitelist"] = parse_networks(data.get("whitelist", {}).get("cidrs", []))
    except ValueError as e:
        raise fail("whitelist", "cidrs", str(e)) from None
    cfg.update(_whitelist_sources(data.get("whitelist", {}), path, fail))

    rule_files = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise fail("rules", None, "must be an array of tables: [[rules]] path = \"...\" scope = \"domain\"")
    for i, entry in enumerate(raw_rules):
        def rfail(msg: str, i: int = i) -> ConfigError:
            return fail("rules", None, f"entry {i + 1}: {msg}")
        if not isinstance(entry, dict) or "path" not in entry or not isinstance(entry["path"], str):
            raise rfail("needs path = \"...\"")
        unknown = set(entry) - {"path", "scope", "ports"}
        if unknown:
            raise rfail(f"unknown key {sorted(unknown)[0]!r}")
        scope = entry.get("scope", DOMAIN)
        if scope not in SCOPES:
            raise rfail(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        rports = tuple(_port_list(entry["ports"], rfail)) if "ports" in entry else None
        if rports is not None and scope != PAYLOAD:
            raise rfail("ports apply to payload rules only")
        rule_files.append(RuleFile(Path(entry["path"]), scope, rports))
    cfg["rules"] = tuple(rule_files)
    svc = data.get("service", {})
    settings: dict[str, Any] = {}
    for key in ("fail_open", "syslog", "state_file", "events", "control_socket"):
        if key in svc:
            settings[key] = svc[key]
    if "queue" in svc:
        settings["queue"] = _bounded(svc["queue"], 0, 65535, lambda m: fail("service", "queue", m))
    if "queue_maxlen" in svc:
        settings["queue_maxlen"] = _bounded(svc["queue_maxlen"], 1, 1 << 20,
                                            lambda m: fail("service", "queue_maxlen", m))
    settings.update(_mark_bits(svc, fail))
    if "workers" in svc:
        settings["workers"] = _bounded(svc["workers"], 0, 64, lambda m: fail("service", "workers", m))
    if "maxelem" in svc:
        settings["maxelem"] = _bounded(svc["maxelem"], 1, 1 << 27, lambda m: fail("service", "maxelem", m))
    for key in ("ipset_v4", "ipset_v6"):
        if key in svc:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,31}", svc[key]):
                raise fail("service", key, "an ipset name is 1 to 31 letters, digits, '-', '_' or '.'")
            settings[key] = svc[key]
    cfg["service"] = ServiceSettings(**settings)
    if "logs" in data:
        if not isinstance(data["logs"], dict):
            raise fail("", "logs", "must be a table: [logs]")
        cfg["logs"] = parse_logs(data["logs"], path, where, ConfigError)
    if "metrics" in data:
        cfg["metrics"] = _metrics(data["metrics"], fail)
    if "files" in data:
        cfg["files"] = parse_files(data["files"], lambda key, msg: fail("files", key, msg))
    if "fleet" in data:
        cfg["fleet"] = parse_fleet(data["fleet"], lambda key, msg: fail("fleet", key, msg))
    if "notify" in data:
        cfg["notify"] = parse_notify(data["notify"], fail)
    if "connlimit" in data:
        cfg["connlimit"] = parse_connlimit(data["connlimit"], fail, _port_list)
    if "policy" in data:
        cfg["policy"] = parse_policy(data["policy"], fail)
    return Config(**cfg)


def _whitelist_sources(wl: dict[str, Any], path: Path, fail: Any) -> dict[str, Any]:
    """``[whitelist] files``, ``hosts``, ``resolve_interval``: each file is read once here to report errors."""
    from .whitelist_sources import WhitelistSourceError, read_whitelist_file, valid_hostname

    out: dict[str, Any] = {}
    files = []
    for entry in wl.get("files", []):
        if not isinstance(entry, str) or not entry:
            raise fail("whitelist", "files", f"expected file paths, got {entry!r}")
        p = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        try:
            read_whitelist_file(p)
        except WhitelistSourceError as e:
            raise fail("whitelist", "files", str(e)) from None
        files.append(str(p))
    out["whitelist_files"] = tuple(files)
    hosts = wl.get("hosts", [])
    for h in hosts:
        if not isinstance(h, str) or not valid_hostname(h):
            raise fail("whitelist", "hosts", f"not a host name: {h!r} (IDNs in A-label form, xn--...)")
    out["whitelist_hosts"] = tuple(hosts)
    if "resolve_interval" in wl:
        out["whitelist_resolve"] = float(_bounded(wl["resolve_interval"], 10, 86400,
                                                  lambda m: fail("whitelist", "resolve_interval", m)))
    return out


def _metrics(section: dict[str, Any], fail: Any) -> MetricsSettings:
    """The ``[metrics]`` section (its types are already checked)."""
    listen = section.get("listen", "")
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or (":" in host and not host.startswith("[")):
            raise fail("metrics", "listen", f"expected \"host:port\" such as \"127.0.0.1:9478\" or \"[::1]:9478\", "
                                            f"not {listen!r}")
    return MetricsSettings(listen)


def _check_type(table: str, key: str, value: Any, fail: Any) -> None:
    known = _KNOWN.get(table, {})
    if key not in known:
        names = ", ".join(sorted(known))
        raise fail(table, key, f"unknown setting (known here: {names})")
    want = known[key]
    if want is bool:
        if not isinstance(value, bool):
            raise fail(table, key, f"expected true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, want):
        kinds = want if isinstance(want, tuple) else (want,)
        raise fail(table, key, f"expected {' or '.join(_kind(k) for k in kinds)}, got {_kind(type(value))} {value!r}")


def _kind(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(t, t.__name__)


def _bounded(value: Any, low: float, high: float, fail: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise fail(f"must be between {low} and {high}, not {value}")
    return value


def _ban(value: Any, fail: Any) -> int:
    # ipset's largest timeout is 2,147,483 s; 0 means: no ban
    return int(_bounded(value, 0, 2_147_483, fail))


def _port_list(value: Any, fail: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise fail("expected a non-empty list of ports")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise fail(f"invalid port {v!r}")
    return list(dict.fromkeys(value))


# [service] mark bits, in order: each one a single bit apart from those before it (mark: never 0);
# what the error says it must be
_MARK_BITS = (("mark", "a single bit such as 0x40000000"),
              ("body_mark", "a single bit other than mark (0: no in-body filter)"),
              ("reply_mark", "a single bit other than mark and body_mark (0: replies not watched)"))


def _mark_bits(svc: dict[str, Any], fail: Callable[[str, str | None, str], ConfigError]) -> dict[str, int]:
    """``[service] mark``, ``body_mark``, ``reply_mark`` (setup-nfqueue.sh ``--mark``, ``--body-mark``,
    ``--reply-mark``): each a single bit, apart from the others.  A default that collides with a bit
    set before it is an error under its own name, as a setting given would be."""
    out: dict[str, int] = {}
    earlier: list[int] = []
    for key, must in _MARK_BITS:
        value = svc.get(key, getattr(ServiceSettings, key))
        ok = isinstance(value, int) and 0 <= value <= 0xFFFFFFFF and not value & (value - 1) \
            and (value > 0 or key != "mark") and not (value and value in earlier)
        if not ok:
            raise fail("service", key, f"must be {must}, not {value!r}")
        if key in svc:
            out[key] = value
        earlier.append(value)
    return out
