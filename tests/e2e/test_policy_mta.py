"""The policy path with real MTAs and real TLS: Postfix (check_policy_service) and Exim (ACL readsocket).

Server namespace: the setup script's rules (the ban sets drop in the kernel), the MTA on
port 25 with STARTTLS (a self-signed certificate) and ``inspector policy`` on
127.0.0.1:10040.  Client namespace: ``swaks --tls`` and a small smtplib client for
sessions with several transactions.  Each MTA gets one bed, and the cases use distinct
client addresses, since every hit bans its source.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .bed import CLIENTS, PY, REPO, SERVER, Bed, Proc, wait_for
from .bed import why_not as bed_why_not
from .conftest import bed_up

BLOCKED = "blocked.test"
IDN = "b\u00fccher.test"  # an internationalised rule: stored and matched in its IDNA form
POLICY = "127.0.0.1:10040"
SNIPPET = REPO / "packaging" / "postfix-main.cf.snippet"
RELAY_NETS = ["198.51.100.0/24", "203.0.113.0/24", "[2001:db8:1::]/48", "[2001:db8:2::]/48", "[2001:db8:3::]/48",
              "[2001:db8:ffff::]/48"]
EXIM_ACL = REPO / "packaging" / "exim4-acl.conf"

# one SMTP session over STARTTLS with several transactions; prints what happened as JSON
SESSION = r"""
import json, smtplib, ssl, sys
server, src, transactions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {"tls": None, "replies": [], "closed": False, "delivered": 0}
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
utf8 = lambda *a: ["SMTPUTF8"] if any(not x.isascii() for x in a) else []
try:
    s = smtplib.SMTP(server, 25, source_address=(src, 0), timeout=10, local_hostname="client.test")
    s.ehlo(); s.starttls(context=ctx); s.ehlo()
    out["tls"] = s.sock.version()
    for sender, rcpts in transactions:
        code, _ = s.mail(sender, utf8(sender, *rcpts)); out["replies"].append(["MAIL", code])
        ok = 0
        for r in rcpts:
            code, text = s.rcpt(r); out["replies"].append(["RCPT", code, text.decode(errors="replace")])
            ok += code == 250
        if ok:
            code, _ = s.data(b"Subject: t\r\n\r\nhello\r\n"); out["replies"].append(["DATA", code])
            out["delivered"] += code == 250
    s.quit()
except (smtplib.SMTPServerDisconnected, ConnectionError, OSError) as e:
    out["closed"] = True; out["error"] = type(e).__name__
print(json.dumps(out))
"""


def why_not() -> str | None:
    reason = bed_why_not()
    if reason:
        return reason
    if shutil.which("swaks") is None:
        return "needs swaks (scripts/bootstrap.sh installs it)"
    if shutil.which("openssl") is None:
        return "needs openssl"
    return None


class PolicyBed:
    """The bed, the setup script's rules and ``inspector policy`` in the server namespace."""

    def __init__(self, bed: Bed, tmp: Path) -> None:
        self.bed = bed
        self.tmp = tmp
        self.proc: Proc | None = None

    def start_policy(self, timeout: float = 20) -> Proc:
        bed = self.bed
        seen = len(bed.events(event="started"))
        proc = bed._spawn("policy", bed.server, [PY, "-m", "inspector", "policy", "--config", str(bed.config_file)])
        bed.stack.callback(proc.stop)
        self.proc = proc

        def started() -> bool:
            if not proc.alive():
                raise RuntimeError(f"inspector policy exited early:\n{proc.tail()}")
            return len(bed.events(event="started")) > seen
        wait_for(started, timeout, what="inspector policy's 'started' event")
        return proc

    def swaks(self, src: str, sender: str, rcpts: list[str], v: int = 4) -> subprocess.CompletedProcess[str]:
        return self.bed.c("swaks", "--tls", "--server", SERVER[v], "--port", "25", "--local-interface", src,
                          "--helo", "client.test", "--from", sender, "--to", ",".join(rcpts), "--timeout", "15",
                          check=False, timeout=60)

    def session(self, src: str, transactions: list[tuple[str, list[str]]], v: int = 4) -> dict[str, Any]:
        r = self.bed.c(PY, "-c", SESSION, SERVER[v], src, json.dumps(transactions), check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def dropped(self, src: str) -> bool:
        """A new connection from ``src`` gets no answer at all (the kernel drops it)."""
        return self.bed.connect(src, 25, timeout=1.5).get("error") == "timeout"

    def policy_verdicts(self) -> list[dict[str, Any]]:
        return self.bed.events(event="verdict", path="policy")


@pytest.fixture
def pbed(tmp_path: Path) -> Iterator[PolicyBed]:
    with bed_up(Bed(tmp_path), servers=False, extra_reason=why_not()) as bed:
        bed.install()
        bed.write_config(domains=f"{BLOCKED}\n{IDN}\n", extra=f'[policy]\nlisten = "{POLICY}"\n')
        yield PolicyBed(bed, tmp_path)


def _certificate(tmp: Path) -> tuple[Path, Path]:
    from .exim import make_certificate

    return make_certificate(tmp / "tls")


def postfix_settings(cert: Path, key: Path) -> dict[str, str]:
    """The shipped main.cf snippet, plus the certificate of this test."""
    settings: dict[str, str] = {}
    for line in SNIPPET.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    settings.update({"smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
                     "smtpd_tls_security_level": "may", "smtpd_tls_loglevel": "1",
                     "smtpd_tls_session_cache_database": ""})
    return settings


def _cut(r: subprocess.CompletedProcess[str], code: str) -> bool:
    """swaks saw ``code`` inside TLS, then the server closed the session: no reply followed."""
    out = r.stdout + r.stderr
    if "TLS started" not in out or f"<~* {code}" not in out or "Remote host closed connection" not in out:
        return False
    return "<~" not in out.split(f"<~* {code}", 1)[1]


@pytest.mark.e2e
def test_postfix_policy_path_inside_tls(pbed: PolicyBed, tmp_path: Path) -> None:
    from .mta import Postfix
    from .mta import why_not as postfix_why_not

    if postfix_why_not():
        pytest.skip(postfix_why_not() or "")
    bed = pbed.bed
    cert, key = _certificate(tmp_path)
    pbed.start_policy()
    a4, b4, c4, w4 = (CLIENTS[4][k] for k in "abcw")
    a6, b6 = CLIENTS[6]["a"], CLIENTS[6]["b"]
    outsider = "2001:db8:4::10"  # not in mynetworks: may not relay
    bed.add_client_addresses([outsider])
    with Postfix(tmp_path / "pf", bed.server, mynetworks=RELAY_NETS,
                 main=postfix_settings(cert, key), master=["tlsmgr unix - - n 1000? 1 tlsmgr"]) as pf:
        # a client that may not relay: Postfix answers a clean foreign recipient "Relay access denied"
        # itself, but a blocked one is judged first (the check leads smtpd_relay_restrictions) and cut
        r = pbed.swaks(outsider, "a@example.org", ["y@example.org"], v=6)
        assert "Relay access denied" in r.stdout and not bed.banned(outsider), r.stdout
        r = pbed.swaks(outsider, "a@example.org", [f"y@{BLOCKED}"], v=6)
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned(outsider)
        # clean mail inside TLS is delivered
        r = pbed.swaks(b6, "a@example.org", ["clean@example.net"], v=6)
        assert r.returncode == 0 and "TLS started" in r.stdout, r.stdout
        # a blocked RCPT inside TLS: 421, the session ends before the next RCPT, the source is banned
        r = pbed.swaks(a4, "a@example.org", [f"x@mx.{BLOCKED}", "y@example.net"])
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned(a4), "not in the ipset"
        assert pbed.dropped(a4)
        # IPv6, upper case and a trailing dot: same rules as the packet path; the /64 is banned
        r = pbed.swaks(a6, "a@example.org", [f"X@{BLOCKED.upper()}."], v=6)
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned(a6)
        # a blocked MAIL FROM (Postfix asks at RCPT: smtpd_delay_reject)
        r = pbed.swaks(b4, f"s@{BLOCKED}", ["clean@example.net"])
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned(b4) and pbed.dropped(b4)
        # a second transaction in the same TLS session: the first is delivered, the second cut
        s = pbed.session(c4, [("a@example.org", ["first@example.net"]), ("a@example.org", [f"z@{BLOCKED}"])])
        assert s["tls"] == "TLSv1.3" and s["delivered"] == 1 and s["closed"], s
        assert s["replies"][-1][:2] == ["RCPT", 421], s
        assert bed.banned(c4) and pbed.dropped(c4)
        # Postfix's percent hack would deliver this to v@blocked.test (the request carries the original form)
        bed.add_client_addresses(["198.51.100.13"])
        r = pbed.swaks("198.51.100.13", "a@example.org", [f"v%{BLOCKED}@[{SERVER[4]}]"])
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned("198.51.100.13")
        # an internationalised domain in UTF-8 (SMTPUTF8), upper case, inside TLS: the rule's IDNA form matches
        bed.add_client_addresses(["198.51.100.14"])
        s = pbed.session("198.51.100.14", [("a@example.org", ["x@MX.B\u00dcCHER.test"])])
        assert s["closed"] and s["replies"][-1][:2] == ["RCPT", 421], s
        assert bed.banned("198.51.100.14")
        # the whitelist is honoured: DUNNO, delivered, not banned
        r = pbed.swaks(w4, "a@example.org", [f"ok@{BLOCKED}"])
        assert r.returncode == 0, r.stdout
        assert not bed.banned(w4)
        # SIGHUP: a rule added to the file takes effect without a restart
        assert pbed.proc is not None
        bed.rules_file.write_text(f"{BLOCKED}\n{IDN}\nlate.test\n")
        pbed.proc.send(signal.SIGHUP)
        bed.wait_event(event="reload", ok=True, timeout=10)
        c6 = CLIENTS[6]["c"]
        r = wait_for(lambda: (lambda r: r if _cut(r, "421 4.7.1") else None)(
            pbed.swaks(c6, "a@example.org", ["x@late.test"], v=6)), 10, interval=0.3, what="the reloaded rule")
        assert bed.banned(c6)
        pf.wait_settled()
        assert {"clean@example.net", "first@example.net", f"ok@{BLOCKED}"} <= pf.recipients(), pf.log_tail()
        assert not {f"x@mx.{BLOCKED}", "y@example.net", f"z@{BLOCKED}"} & pf.recipients()
        verdicts = pbed.policy_verdicts()
        assert sorted(v["src"] for v in verdicts) == sorted([outsider, a4, a6, b4, c4, "198.51.100.13",
                                                             "198.51.100.14", c6])
        assert all(v["tls"] == "TLSv1.3" and v["reason"] == "domain" for v in verdicts)
        assert {v["field"] for v in verdicts} == {"sender", "recipient"}
        bans = bed.events(event="ban")
        assert len(bans) == 8 and all(b.get("path") == "policy" and b["reason"] == "domain" for b in bans), bans
        status = json.loads(bed.cli("status", "--json").stdout)
        assert status["policy"]["counts"]["reject"] == 8 and status["policy"]["counts"]["whitelisted"] == 1
        # inspector policy owns the ban state: bans and unban work as with inspector run
        listed = [json.loads(line)["network"] for line in bed.cli("bans", "--json").stdout.splitlines()]
        assert a4 in listed and "2001:db8:1::/64" in listed, listed
        assert bed.cli("unban", a4).returncode == 0
        assert not bed.banned(a4) and bed.connect(a4, 25, timeout=3).get("connected")
        # the policy service killed: mail still flows (smtpd_policy_service_default_action = DUNNO)
        pbed.proc.stop(signal.SIGKILL)
        r = pbed.swaks(b6, "a@example.org", ["after@example.net"], v=6)
        assert r.returncode == 0, r.stdout
        pf.wait_settled()
        assert "after@example.net" in pf.recipients()


@pytest.mark.e2e
def test_both_paths_plaintext_is_cut_by_the_packet_path_tls_by_the_policy_hook(pbed: PolicyBed,
                                                                               tmp_path: Path) -> None:
    """``inspector run`` with ``[policy] listen``: one service, both paths, one ban pipeline."""
    from .mta import Postfix
    from .mta import why_not as postfix_why_not

    if postfix_why_not():
        pytest.skip(postfix_why_not() or "")
    bed = pbed.bed
    cert, key = _certificate(tmp_path)
    bed.start_inspector()
    a4, b4 = CLIENTS[4]["a"], CLIENTS[4]["b"]
    with Postfix(tmp_path / "pf", bed.server, mynetworks=RELAY_NETS,
                 main=postfix_settings(cert, key), master=["tlsmgr unix - - n 1000? 1 tlsmgr"]) as pf:
        # plain text: the packet path resets the session at the blocked RCPT; Postfix never sees it
        r = bed.smtp(a4, rcpts=[f"x@{BLOCKED}"], timeout=5)
        assert r["error"] in ("reset", "closed") and not r["delivered"], r
        assert bed.banned(a4) and pbed.dropped(a4)
        # inside TLS: the packet path sees nothing, the policy hook served by the same process acts
        r = pbed.swaks(b4, "a@example.org", [f"y@{BLOCKED}", "z@example.net"])
        assert _cut(r, "421 4.7.1"), r.stdout + r.stderr
        assert bed.banned(b4) and pbed.dropped(b4)
        pf.wait_settled()
        status = json.loads(bed.cli("status", "--json").stdout)
    verdicts = bed.events(event="verdict")
    assert [(v["src"], v.get("path", "packet")) for v in verdicts if v.get("reason") == "domain"] == [
        (a4, "packet"), (b4, "policy")], verdicts
    assert status["policy"]["counts"]["requests"] == 1, "the plain-text session reached the policy service"
    assert f"x@{BLOCKED}" not in pf.log(), "Postfix saw the plain-text blocked RCPT"
    report = json.loads(bed.cli("report", "--json", "--since", "1h").stdout)
    assert report["blocks_by_path"] == {"packet": 1, "policy": 1}, report
    assert report["bans_by_path"].get("policy") == 1 and report["bans_by_path"].get("packet") == 1, report


@pytest.mark.e2e
def test_exim_with_debians_configuration_policy_path_inside_tls(pbed: PolicyBed, tmp_path: Path) -> None:
    """Debian's own exim4 split configuration, with packaging/exim4-acl.conf installed as the README says."""
    from .exim import Exim, EximUnavailable, debian_config

    bed = pbed.bed
    cert, key = _certificate(tmp_path)
    a4, b4, c4, w4 = (CLIENTS[4][k] for k in "abcw")
    a6 = CLIENTS[6]["a"]
    (tmp_path / "debian").mkdir()
    try:  # c4 may relay (dc_relay_nets); the others may only send to local users of example.net
        config = debian_config(tmp_path / "debian", f"{c4}/32", [f"MAIN_ACL_CHECK_RCPT = {EXIM_ACL}"])
        exim = Exim(bed.server, cert, key, config, workdir=tmp_path / "exim")
    except EximUnavailable as e:
        pytest.skip(str(e))
    pbed.start_policy()
    local = "postfix@example.net"  # a local user; those sessions stop after RCPT (no delivery to /var/mail)

    def rcpt(src: str, sender: str, rcpts: list[str], v: int = 4) -> subprocess.CompletedProcess[str]:
        return bed.c("swaks", "--tls", "--server", SERVER[v], "--local-interface", src, "--helo", "client.test",
                     "--from", sender, "--to", ",".join(rcpts), "--quit-after", "RCPT", "--timeout", "15",
                     check=False, timeout=60)
    with exim:
        r = rcpt(a6, "a@example.org", [local], v=6)
        assert r.returncode == 0 and "TLS started" in r.stdout, r.stdout + exim.log_tail()
        # a blocked RCPT from a client that may not relay: judged before Debian's relay check, and cut
        r = rcpt(a4, "a@example.org", [f"x@mx.{BLOCKED}", local])
        assert _cut(r, "550 5.7.1"), r.stdout + r.stderr + exim.log_tail()
        assert bed.banned(a4) and pbed.dropped(a4)
        # a relay client (accepted early by Debian's ACL): a clean message is taken, then a second
        # transaction with a blocked sender in the same TLS session is cut
        s = pbed.session(c4, [("a@example.org", ["first@example.com"]), (f"s@{BLOCKED}", ["second@example.com"])])
        assert s["delivered"] == 1 and s["closed"] and s["replies"][-1][:2] == ["RCPT", 550], s
        assert bed.banned(c4)
        # whitelisted: the policy says DUNNO and Debian's own ACL decides (no relay for it here)
        r = rcpt(w4, "a@example.org", [f"ok@{BLOCKED}"])
        assert "550 relay not permitted" in r.stdout and not bed.banned(w4), r.stdout
        # Debian's own refusals still come through the wrapper, and ban nothing
        r = rcpt(b4, "a@example.org", ["nobody-here@example.net"])
        assert "550 Unrouteable address" in r.stdout and not bed.banned(b4), r.stdout
        verdicts = pbed.policy_verdicts()
        assert sorted(v["src"] for v in verdicts) == sorted([a4, c4]) and all(v["tls"] for v in verdicts), verdicts
        # the policy service hung (stopped): ${readsocket} times out after 5 s and returns its fail string
        assert pbed.proc is not None
        pbed.proc.send(signal.SIGSTOP)
        started = time.monotonic()
        r = rcpt(a6, "a@example.org", [local], v=6)
        assert r.returncode == 0, r.stdout + exim.log_tail()
        assert 4.0 < time.monotonic() - started < 15.0
        # the policy service killed: ${readsocket} cannot connect, the ACL goes on (fail open)
        pbed.proc.stop(signal.SIGKILL)
        r = rcpt(b4, "a@example.org", [local])
        assert r.returncode == 0, r.stdout + exim.log_tail()
        received = [rc for _, rcpts in exim.received() for rc in rcpts]
        assert received == ["first@example.com"], exim.log_tail()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
