import pytest

from inspector.config import ConfigError, load_config
from inspector.rules import DOMAIN, PAYLOAD, RuleError, RuleFile, load_rules, parse_payload


def rules_from(tmp_path, text, name="r.txt", scope=DOMAIN):
    p = tmp_path / name
    p.write_text(text)
    return load_rules([RuleFile(p, scope)]), p


def test_domain_file_comments_blanks_case(tmp_path):
    rs, _ = rules_from(tmp_path, "# header\n\nExample.COM  # trailing comment\nexample.com\nb\u00fccher.example\n")
    assert rs.counts[DOMAIN] == 2
    assert rs.duplicates == 1
    assert rs.domains.match("mx.example.com") == "example.com"
    assert rs.domains.match("xn--bcher-kva.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize("line, message", [
    ("foo..bar", "invalid domain 'foo..bar'"),
    ("@example.com", "write the domain alone: 'example.com'"),
    ("*.example.com", "no wildcard needed"),
    ("-bad.example", "invalid domain"),
    ("a" * 64 + ".example", "invalid domain"),
    ("exa mple.com", "invalid domain"),
])
def test_domain_errors_name_file_and_line(tmp_path, line, message):
    with pytest.raises(RuleError) as e:
        rules_from(tmp_path, f"# ok\ngood.example\n{line}\n")
    assert str(e.value).startswith(f"{tmp_path / 'r.txt'}:3: ")
    assert message in str(e.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "r.txt"
    p.write_bytes(b"ok.example\n\xff\xfe\n")
    with pytest.raises(RuleError, match=r"r.txt:2: not valid UTF-8"):
        load_rules([RuleFile(p, DOMAIN)])


def test_missing_file(tmp_path):
    with pytest.raises(RuleError, match="cannot read"):
        load_rules([RuleFile(tmp_path / "nope.txt", DOMAIN)])


def test_payload_escapes_and_errors(tmp_path):
    assert parse_payload(r"ab\x00\r\n\\") == b"ab\x00\r\n\\"
    with pytest.raises(RuleError, match=r"p.payload:1: payload string 'ab' is shorter"):
        rules_from(tmp_path, "ab\n", "p.payload", PAYLOAD)
    with pytest.raises(RuleError, match=r"p.payload:2: invalid escape"):
        rules_from(tmp_path, "fine-string\nbad\\q\n", "p.payload", PAYLOAD)


def test_shipped_rules_load():
    cfg = load_config()
    rs = load_rules(cfg.rules)
    assert rs.counts[DOMAIN] >= 1


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file():
    cfg = load_config()
    assert cfg.smtp_ports == (25,) and cfg.other_ports == (22,)
    assert cfg.rates[0].limit == 4 and cfg.rates[0].window == 60 and cfg.rates[0].ban == 86400
    assert cfg.depth == 4096 and cfg.rate_capacity == 1_000_000 and cfg.ipv6_prefix == 64
    assert cfg.mode == "enforce"


def test_full_config(tmp_path):
    (tmp_path / "x.txt").write_text("blocked.test\n")
    p = write(tmp_path, """
mode = "alert"
[ports]
smtp = [25, 587]
other = [22]
[stream]
depth = 8192
[rate]
limit = 10
window = 30
rules = [{ports = [25], limit = 50, window = 60}]
[bans]
domain = 3600
[whitelist]
cidrs = ["203.0.113.0/24", "2001:db8:ffff::/48"]
[[rules]]
path = "x.txt"
""")
    cfg = load_config(p)
    assert cfg.alert and cfg.smtp_ports == (25, 587) and cfg.depth == 8192
    assert cfg.rates[0].ports == (25,) and cfg.rates[0].limit == 50
    assert cfg.rates[1].limit == 10 and cfg.rates[1].window == 30
    assert cfg.ban_domain == 3600
    assert len(cfg.whitelist) == 2
    assert cfg.rules[0].path == tmp_path / "x.txt"


@pytest.mark.parametrize("text, line, message", [
    ('mode = "block"\n', 1, "mode: must be 'enforce' or 'alert'"),
    ('[stream]\n\ndepth = "big"\n', 3, "stream.depth: expected an integer"),
    ('[stream]\ndepth = 10\n', 2, "stream.depth: must be between 64"),
    ('[ports]\nsmtp = [25, 70000]\n', 2, "ports.smtp: invalid port 70000"),
    ('[rate]\nlimt = 3\n', 2, "rate.limt: unknown setting"),
    ('[bogus]\nx = 1\n', 1, "bogus: unknown section"),
    ('[whitelist]\ncidrs = ["300.1.1.1/8"]\n', 2, "invalid network '300.1.1.1/8'"),
    ('[bans]\ndomain = 9999999\n', 2, "bans.domain: must be between 0 and 2147483"),
    ('mode = \n', 1, "invalid TOML"),
])
def test_config_errors_name_file_and_line(tmp_path, text, line, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert message in str(e.value)


def test_rules_path_override(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.txt").write_text("a.example\n")
    (d / "b.payload").write_text("evilstring\n")
    (d / "README.md").write_text("not a rule file\n")
    cfg = load_config(None, d)
    assert [(r.path.name, r.scope) for r in cfg.rules] == [("a.txt", DOMAIN), ("b.payload", PAYLOAD)]


def test_service_section(tmp_path):
    p = write(tmp_path, '[service]\nqueue = 3\nfail_open = false\nevents = "-"\nipset_v4 = "my-ban4"\n')
    svc = load_config(p).service
    assert (svc.queue, svc.fail_open, svc.events, svc.ipset_v4, svc.ipset_v6) == \
        (3, False, "-", "my-ban4", "inspector-ban6")


@pytest.mark.parametrize("text, message", [
    ('[service]\nfail_open = "yes"\n', "service.fail_open: expected true or false"),
    ('[service]\nqueue = 70000\n', "service.queue: must be between 0 and 65535"),
    ('[service]\nipset_v4 = "a name with spaces"\n', "service.ipset_v4: an ipset name is 1 to 31"),
])
def test_service_errors(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:2: ") and message in str(e.value)


def test_shipped_example_config_is_valid():
    from pathlib import Path

    from inspector.config import DEFAULT_RULES

    example = Path(__file__).resolve().parent.parent / "packaging" / "inspector.toml"
    cfg = load_config(example, DEFAULT_RULES)  # its rules path points at /opt/inspector
    assert cfg.rates[0].ports == (25,) and cfg.rates[0].limit == 30
    assert cfg.service.events == "/var/log/inspector/events.jsonl" and cfg.service.syslog
    assert load_rules(cfg.rules).counts[DOMAIN] >= 1
