"""The differential harness: the same segments to a real receiver and to the engine.

A :class:`Case` is data: a list of :class:`Seg` (bytes, flags, sequence placement)
and what the case is about.  :class:`DiffBed` runs many cases in one pair of
namespaces (see ``tests/e2e/bed.py``): Postfix (``tests/e2e/mta.py``) listens on port 25
of the server namespace with the real Linux TCP stack and no firewall; each case's
session comes from its own client address (so Postfix's log names the session:
``client=unknown[ADDR]``), is sent by ``sender.py`` on a packet socket in the client
namespace and is captured, frame for frame, to a pcap.

Then :func:`engine_blocks` replays each capture through the engine (``inspector
replay``'s code path) for a decide mode, and :meth:`Outcome.agrees` compares: a
case passes when the engine blocks (a ``domain`` verdict) exactly the sessions in
which Postfix accepted a blocked recipient (a logged ``to=``/``orig_to=`` whose
domain, in its IDNA 2008 / UTS #46 form, is a blocked domain or under one).

Adding a case (the tcp helper's TCP-level cases too): append a :class:`Case` to a
list in ``cases.py`` (or a module of your own imported by ``test_differential.py``)::

    Case("urg-byte-inside-domain", [ehlo(), mail(), Seg(b"RCPT TO:<v@exaXmple.com>\\r\\n", flags="PAU", urg=17),
                                    data_and_body()], postfix_accepts=True)

``postfix_accepts`` states what the case expects of Postfix (True: a blocked recipient
is queued; False: none is; None: no opinion); a case whose Postfix result differs is
reported as a broken case, not as an engine failure.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idna

from inspector.config import Config
from inspector.detect.smtp import SmtpSettings
from inspector.engine import Engine
from inspector.replay import replay_file
from inspector.rules import DOMAIN, RuleFile, load_rules

from ..bed import SERVER, Bed
from ..mta import Postfix

HERE = Path(__file__).resolve().parent
SENDER = HERE / "sender.py"
# the rules as an operator writes them: straße.example in its U-label form (stored as xn--strae-oqa.example)
BLOCKED = ("example.com", "straße.example", "blocked.test")
# client addresses: one per session (first 198.51.100.100.., 2001:db8:1::100..)
FIRST = {4: ipaddress.ip_address("198.51.100.100"), 6: ipaddress.ip_address("2001:db8:1::100")}
MYNETWORKS = ["198.51.100.0/24", "[2001:db8:1::]/64"]
# a local domain without users: a recipient there is refused for policy (550 5.1.1 User unknown in
# local recipient table), which the client side cannot tell; and one refused by an access map
LOCAL_DOMAIN = "unknown-user.local"
DENIED_DOMAIN = "denied.test"
POLICY_MAIN = {"mydestination": LOCAL_DOMAIN, "local_recipient_maps": "inline:{ postmaster=ok }",
               "smtpd_recipient_restrictions": f"check_recipient_access inline:{{ {DENIED_DOMAIN}=REJECT }}"}
# the engine configured as the Postfix instance is: its only own domain is LOCAL_DOMAIN (and its address
# literals); the default (every domain possibly local) is tested by the unit tests
ENGINE_CONFIG: dict[str, Any] = {"smtp": SmtpSettings(local_domains=(LOCAL_DOMAIN,))}
# decide modes as the engine is checked: client-only captures (the live queue's view without the reply
# mark) and two-sided ones ("+replies": the server's replies read, as with the reply mark)
REPLIES = "+replies"


@dataclass(frozen=True)
class Seg:
    """One client segment.

    ``off``: stream offset (0 = the first byte after the SYN); None = right after the
    previous in-order segment.  ``seq``: an absolute sequence number instead (a SYN
    with a new ISN, a segment below the window).  ``flags`` in scapy letters (ACK is
    added unless ``noack``); ``urg``: the urgent pointer; ``tsval``: an explicit TCP
    timestamp (cases with ``timestamps=True``); ``wait``: seconds to wait after it.
    """

    data: bytes = b""
    off: int | None = None
    flags: str = "PA"
    urg: int = 0
    seq: int | None = None
    tsval: int | None = None
    noack: bool = False
    wait: float = 0.03
    window: int | None = None  # the advertised window field (scaled by 128: the SYN offers WScale 7)

    def spec(self) -> dict[str, Any]:
        out = {"data": self.data.hex(), "off": self.off, "flags": self.flags, "urg": self.urg,
               "seq": self.seq, "tsval": self.tsval, "noack": self.noack, "wait": self.wait}
        if self.window is not None:
            out["window"] = self.window
        return out


@dataclass(frozen=True)
class Case:
    """A session as data: its segments and what Postfix is expected to do with it."""

    name: str
    segments: Sequence[Seg]
    postfix_accepts: bool | None = None
    timestamps: bool = False
    isn: int = 1000
    kind: str = ""          # the kind it belongs to ("2", "3", ...), for reports
    families: tuple[int, ...] = (4, 6)
    note: str = ""
    syn_data: bytes = b""   # payload on the SYN (the tcp cases)
    replies_only: bool = False  # only the server's replies tell (a policy refusal): client-only views miss it


@dataclass
class Outcome:
    """What happened to one case in one address family."""

    case: Case
    family: int
    src: str
    pcap: Path
    pcap_replies: Path | None = None  # the two-sided capture (the server's frames too)
    recipients: set[str] = field(default_factory=set)
    blocked_accepted: bool = False
    engine: dict[str, bool] = field(default_factory=dict)  # decide mode -> blocked
    client: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # Postfix's log lines naming this session's client

    def agrees(self, mode: str) -> bool:
        return self.engine[mode] == self.blocked_accepted

    def describe(self, mode: str) -> str:
        return (f"{self.case.name} IPv{self.family} decide={mode}: Postfix accepted {sorted(self.recipients)} "
                f"(blocked: {self.blocked_accepted}), engine blocked: {self.engine.get(mode)}")


# ---- the oracle: what counts as a blocked recipient in Postfix's log --------------------------------------

def domain_form(domain: str) -> str:
    """A domain in its IDNA 2008 / UTS #46 A-label form (lower case); unchanged if it is not valid IDNA."""
    d = domain.strip().rstrip(".").lower()
    try:
        return idna.encode(d, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        return d


def is_blocked_address(address: str, blocked: Iterable[str] = BLOCKED) -> bool:
    """Postfix's final address ``local@domain`` has a blocked domain (or a subdomain of one)."""
    if "@" not in address:
        return False
    d = domain_form(address.rpartition("@")[2])
    forms = [domain_form(b) for b in blocked]
    return any(d == b or d.endswith("." + b) for b in forms)


# ---- the engine's side ------------------------------------------------------------------------------------

def engine_blocks(pcap: Path, workdir: Path, decide: str, blocked: Iterable[str] = BLOCKED,
                  extra: dict[str, Any] | None = None) -> bool:
    """Replay ``pcap`` through a fresh engine; True when it issued a domain verdict."""
    rules = workdir / "diff-rules.txt"
    rules.write_text("".join(f"{d}\n" for d in blocked), encoding="utf-8")
    engine = Engine(Config(decide=decide, **(extra or {})), load_rules([RuleFile(rules, DOMAIN)]))
    result = replay_file(engine, str(pcap), collect=True)
    assert result.error is None, result.error
    return any(d.get("reason") == "domain" for d in result.decisions)


# ---- the bed ------------------------------------------------------------------------------------------------

class DiffBed:
    """Namespaces from :class:`Bed` (no servers, no firewall on the server) plus Postfix."""

    def __init__(self, workdir: Path, main: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.bed = Bed(workdir)
        self.postfix: Postfix | None = None
        self.main = {**POLICY_MAIN, **(main or {})}
        self.next_host = 0
        self.v6_own_64 = False  # live runs: a ban of one session's /64 must not stop the next one

    def up(self) -> None:
        self.bed.up()
        for tool in ("iptables", "ip6tables"):
            # the client kernel knows nothing of the sender's connections: keep its RSTs off the wire
            self.bed.c(tool, "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP")
        self.postfix = Postfix(self.dir / "postfix", self.bed.server, mynetworks=MYNETWORKS, main=self.main)
        self.postfix.start()

    def close(self) -> None:
        try:
            if self.postfix is not None:
                self.postfix.stop()
        finally:
            self.bed.close()

    def _address(self, family: int) -> str:
        addr = str(FIRST[family] + self.next_host)
        if family == 6 and self.v6_own_64:  # each session its own /64 (an IPv6 ban covers a /64)
            addr = str(FIRST[6] + ((self.next_host + 1) << 64))
        self.next_host += 1
        prefix = "64 nodad" if family == 6 else "24"
        self.bed.c("ip", "addr", "add", *f"{addr}/{prefix}".split(), "dev", "veth-c")
        return addr

    def run(self, cases: Sequence[Case], families: Sequence[int] = (4, 6),
            modes: Sequence[str] = ("early", "depth")) -> list[Outcome]:
        """Send every case (each family it supports), then read Postfix's log and replay each capture.

        A session whose Postfix result is not the one its case states (``postfix_accepts``) is sent
        once more from a fresh address: on a loaded machine a session can be cut short (the
        sender's 8 s wait for the server's FIN); a real difference shows again and is reported.
        """
        outcomes = self._run_once(cases, families, modes)
        again = [o for o in outcomes if o.case.postfix_accepts is not None
                 and o.blocked_accepted != o.case.postfix_accepts]
        if again:
            retried = self._run_once([o.case for o in again], families, modes, suffix="-retry")
            by_key = {(o.case.name, o.family): o for o in retried}
            outcomes = [by_key.get((o.case.name, o.family), o) if o in again else o for o in outcomes]
        return outcomes

    def _run_once(self, cases: Sequence[Case], families: Sequence[int], modes: Sequence[str],
                  suffix: str = "") -> list[Outcome]:
        assert self.postfix is not None
        pcaps = self.dir / "pcaps"
        pcaps.mkdir(exist_ok=True)
        outcomes: list[Outcome] = []
        sessions = []
        for case in cases:
            for fam in families:
                if fam not in case.families:
                    continue
                src = self._address(fam)
                pcap = pcaps / f"{case.name}-v{fam}{suffix}.pcap"
                both = pcaps / f"{case.name}-v{fam}{suffix}-replies.pcap"
                outcomes.append(Outcome(case, fam, src, pcap, both))
                sessions.append({"src": src, "dst": SERVER[fam], "dport": 25, "sport": 40000 + len(sessions),
                                 "isn": case.isn, "timestamps": case.timestamps, "pcap": str(pcap),
                                 "pcap_replies": str(both),
                                 "segments": [s.spec() for s in case.segments], "syn_data": case.syn_data.hex()})
        peer = self.bed.s("cat", "/sys/class/net/veth-s/address").stdout.strip()
        spec_file = self.dir / f"sender{suffix}.json"
        spec_file.write_text(json.dumps({"iface": "veth-c", "peer_mac": peer, "sessions": sessions}))
        timeout = 30 + 4 * len(sessions)
        r = subprocess.run(["ip", "netns", "exec", self.bed.client, sys.executable, str(SENDER), str(spec_file)],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"sender failed ({r.returncode}):\n{r.stderr[-3000:]}")
        for outcome, result in zip(outcomes, json.loads(r.stdout), strict=True):
            outcome.client = result
        self.postfix.wait_settled()
        log = self.postfix.log()
        by_client = recipients_by_client(log)
        for o in outcomes:
            o.recipients = by_client.get(o.src, set())
            o.log = [line for line in log.splitlines() if f"[{o.src}]" in line][-12:]
            o.blocked_accepted = any(is_blocked_address(a) for a in o.recipients)
            for mode in modes:
                decide, _, replies = mode.partition("+")
                pcap = o.pcap_replies if replies and o.pcap_replies is not None else o.pcap
                o.engine[mode] = engine_blocks(pcap, self.dir, decide, extra=ENGINE_CONFIG)
        return outcomes


_CLIENT = re.compile(r"\]: (?P<qid>[0-9A-F]+): client=[^\[]*\[(?P<addr>[^\]]+)\]")
_TO = re.compile(r"\]: (?P<qid>[0-9A-F]+): to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig>[^>]*)>)?")


def recipients_by_client(log: str) -> dict[str, set[str]]:
    """Client address -> the final recipient addresses (``to=``) Postfix delivered for it."""
    owner: dict[str, str] = {}
    out: dict[str, set[str]] = {}
    for line in log.splitlines():
        m = _CLIENT.search(line)
        if m:
            owner[m["qid"]] = m["addr"].removeprefix("IPv6:")
            continue
        m = _TO.search(line)
        if m and m["qid"] in owner:
            out.setdefault(owner[m["qid"]], set()).add(m["to"])
    return out
