import ipaddress

import pytest

from inspector.config import ConfigError, LogFilter, LogSettings, LogSource, load_config


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_no_logs_section_means_no_sources():
    assert load_config().logs == LogSettings()


def test_full_logs_section(tmp_path):
    p = write(tmp_path, """
[logs]
whitelist = ["66.249.64.0/19", "2001:4860:4801::/48"]   # crawlers
bantime_max = 1209600
maxretry = 4
hosts_deny = "/etc/hosts.deny.inspector"
hosts_deny_daemon = "sshd"
[[logs.source]]
path = "/var/log/mail.log"
filter = "postfix-sasl"
maxretry = 5
findtime = 600
bantime = 86400
[[logs.source]]
path = "logs/errors.log"
filter = "roundcube"
[[logs.source]]
journal = ["_SYSTEMD_UNIT=ssh.service"]
filter = "myapp"
name = "app"
[[logs.filter]]
name = "myapp"
regex = 'auth failure from (?P<host>\\S+)'
literal = "auth failure"
""")
    logs = load_config(p).logs
    assert logs.whitelist == (ipaddress.ip_network("66.249.64.0/19"), ipaddress.ip_network("2001:4860:4801::/48"))
    assert logs.bantime_max == 1209600 and logs.maxretry == 4
    assert logs.hosts_deny == "/etc/hosts.deny.inspector" and logs.hosts_deny_daemon == "sshd"
    assert logs.sources[0] == LogSource("postfix-sasl", "/var/log/mail.log", (), "postfix-sasl:/var/log/mail.log",
                                        5, 600.0, 86400)
    assert logs.sources[1].path == str(tmp_path / "logs/errors.log")  # relative to the config file
    assert logs.sources[1].maxretry == 4  # the [logs] default
    assert logs.sources[2].journal == ("_SYSTEMD_UNIT=ssh.service",) and logs.sources[2].name == "app"
    assert logs.filters == (LogFilter("myapp", "auth failure from (?P<host>\\S+)", "auth failure"),)


def test_other_sections_unchanged_by_logs(tmp_path):
    p = write(tmp_path, '[rate]\nlimit = 7\n[logs]\nbantime_max = 3600\nbantime = 600\n')
    cfg = load_config(p)
    assert cfg.rates[0].limit == 7 and cfg.logs.bantime_max == 3600
    assert not hasattr(cfg, "extra")  # every section is typed now: nothing is passed through untyped


@pytest.mark.parametrize("text, line, message", [
    ('[logs]\nmaxretry = 0\n', 2, "logs.maxretry: must be between 1 and 1000"),
    ('[logs]\nmaxretry = "5"\n', 2, "logs.maxretry: expected an integer"),
    ('[logs]\nbantime_max = 3000000\n', 2, "logs.bantime_max: must be between 1 and 2147483"),
    ('[logs]\nbantime_max = 600\nbantime = 3600\n', 3, "logs.bantime: 3600 is above bantime_max 600"),
    ('[logs]\nwhitelist = ["66.249.64.0/99"]\n', 2, "logs.whitelist: invalid network '66.249.64.0/99'"),
    ('[logs]\nfindtme = 600\n', 2, "logs.findtme: unknown setting"),
    ('[logs]\nhosts_deny_daemon = "ALL: x"\n', 2, "logs.hosts_deny_daemon: a daemon name"),
    ('[logs]\n\n[[logs.source]]\npath = "/var/log/x"\nfilter = "nginx"\n', 5,
     "logs.source[1].filter: unknown filter 'nginx' (known: apache-probe, courier, dovecot, exim, postfix-sasl, "
     "proftpd"),
    ('[[logs.source]]\npath = "/a"\nfilter = "sshd"\n[[logs.source]]\npath = "/b"\n', 4,
     "logs.source[2]: 'filter' is required"),
    ('[[logs.source]]\nfilter = "roundcube"\n', 1, "logs.source[1]: needs path = "),
    ('[[logs.source]]\nfilter = "sshd"\nbackend = "file"\n', 3, "logs.source[1].backend: backend \"file\" needs path"),
    ('[[logs.source]]\nfilter = "apache-probe"\npath = "/a"\nbackend = "journal"\n', 4,
     "logs.source[1].backend: filter 'apache-probe' knows no systemd unit"),
    ('[[logs.source]]\nfilter = "sshd"\nbackend = "systemd"\n', 3, "logs.source[1].backend: must be one of auto, file"),
    ('[[logs.source]]\nfilter = "sshd"\njournal = ["+", "A=1"]\n', 3, "logs.source[1].journal: expected matches"),
    ('[logs]\njournal_directory = 5\n', 2, "logs.journal_directory: expected a string"),
    ('logs = 5\n', 1, "logs: must be a table"),
    ('[[logs.source]]\nfilter = "sshd"\njournal = ["ssh.service"]\n', 3, "logs.source[1].journal: expected matches"),
    ('[[logs.source]]\nfilter = "sshd"\npath = "/a"\nbantime = 9999999\n', 4,
     "logs.source[1].bantime: must be between 0 and 2147483"),
    ('[logs]\nbantime_max = 100\n[[logs.source]]\nfilter = "sshd"\npath = "/a"\nbantime = 200\n', 6,
     "bantime 200 is above [logs] bantime_max 100"),
    ('[[logs.source]]\nfilter = "sshd"\npath = "/a"\nmaxrety = 3\n', 4, "logs.source[1].maxrety: unknown setting"),
    ('[[logs.source]]\nfilter = "sshd"\npath = 5\n', 3, "logs.source[1].path: expected a string"),
    ('[[logs.source]]\nfilter = "sshd"\npath = "/a"\n[[logs.source]]\nfilter = "sshd"\npath = "/a"\n', 4,
     "two sources named 'sshd:/a'"),
    ('[[logs.filter]]\nname = "app"\nregex = \'from (\\S+)\'\n', 3,
     "logs.filter[1].regex: the regex needs a named group (?P<host>...)"),
    ('[[logs.filter]]\nname = "app"\nregex = \'from (?P<host>\\S+\'\n', 3, "logs.filter[1].regex: invalid regex"),
    ('[[logs.filter]]\nname = "sshd"\nregex = \'(?P<host>x)\'\n', 2, "'sshd' is a built-in filter"),
    ('[[logs.filter]]\nname = "a b"\nregex = \'(?P<host>x)\'\n', 2, "logs.filter[1].name: invalid name"),
    ('[[logs.filter]]\nregex = \'(?P<host>x)\'\n', 1, "logs.filter[1]: 'name' is required"),
    ('[[logs.filter]]\nname = "a"\nregex = \'(?P<host>x)\'\n[[logs.filter]]\nname = "a"\nregex = \'(?P<host>y)\'\n',
     5, "filter 'a' is defined twice"),
    ('[[logs.filter]]\nname = "a"\nregex = \'(?P<host>x)\'\nliteral = ""\n', 4,
     "logs.filter[1].literal: must not be empty"),
    ('[logs]\nsource = "x"\n', 2, "logs.source: expected a list"),
])
def test_logs_errors_name_file_and_line(tmp_path, text, line, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:{line}: "), str(e.value)
    assert message in str(e.value)


def test_backends_and_units(tmp_path):
    p = write(tmp_path, """
[logs]
journal_directory = "journal"
[[logs.source]]
filter = "sshd"
[[logs.source]]
filter = "dovecot"
path = "/var/log/mail.log"
[[logs.source]]
filter = "exim"
path = "/var/log/exim4/mainlog"
backend = "file"
[[logs.source]]
filter = "postfix-sasl"
backend = "journal"
journal = ["_SYSTEMD_UNIT=postfix@-.service", "+", "SYSLOG_IDENTIFIER=postfix/smtpd"]
""")
    logs = load_config(p).logs
    assert logs.journal_directory == str(tmp_path / "journal")
    sshd, dovecot, exim, postfix = logs.sources
    assert (sshd.backend, sshd.path, sshd.journal) == ("auto", None, ())
    assert sshd.name == "sshd:_SYSTEMD_UNIT=ssh.service,_SYSTEMD_UNIT=sshd.service"
    assert (dovecot.backend, dovecot.path) == ("auto", "/var/log/mail.log")
    assert exim.backend == "file"
    assert postfix.journal[1] == "+" and postfix.backend == "journal"
