"""Third-party captures (tests/pcaps/, provenance in MANIFEST.tsv) replayed through
`python -m inspector replay`, with the expectations of tests/shared_cases.toml."""

from __future__ import annotations

import csv
import ipaddress
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from tests.replaylib import case_params, check, replay

TESTS = Path(__file__).resolve().parent
PCAPS = TESTS / "pcaps"
with (PCAPS / "MANIFEST.tsv").open(encoding="utf-8", newline="") as f:
    MANIFEST = {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}
CASES: list[dict[str, Any]] = tomllib.loads((TESTS / "shared_cases.toml").read_text(encoding="utf-8"))["case"]
REQUIRED = {"smtp-single-rcpt-basic", "smtp-five-rcpt", "smtp-600-rcpt", "smtp-pipelining",
            "smtp-multi-mail-transactions", "smtp-bdat-pipelined", "smtp-starttls", "smtp-ipv6-client-only",
            "smtp-one-side-only", "smtp-long-command-split", "smtp-auth-login-retransmissions",
            "ssh-password-guessing-11-conns", "ssh-ipv4-ipv6-mixed", "ssh-duplicate-segments",
            "synflood-200-syn-port443"}


def envelope(row: dict[str, str]) -> list[str]:
    """Every MAIL FROM and RCPT TO address the MANIFEST lists for a capture."""
    rcpts = row["smtp_rcpt_to"].split("]", 1)[1].split() if row["smtp_rcpt_to"] else []
    return row["smtp_mail_from"].split() + rcpts


@cache
def client_packets(pcap: str) -> list[tuple[float, str, int]]:
    """(time, source address, destination port) of every TCP packet in a capture."""
    out = []
    for p in rdpcap(str(PCAPS / pcap)):
        ip = p.getlayer(IP) or p.getlayer(IPv6)
        if ip is not None and TCP in p:
            out.append((round(float(p.time), 6), ip.src, p[TCP].dport))
    return out


def protected_ports(config: str | None) -> set[int]:
    ports = tomllib.loads(config or "").get("ports", {})
    return set(ports.get("smtp", [25])) | set(ports.get("other", [22]))


def rest_of_source(pcap: str, after: dict[str, Any], ports: set[int]) -> int:
    """Packets of ``after``'s banned network to protected ports that follow its packet."""
    packets = client_packets(pcap)
    here = next((i for i, (t, src, dport) in enumerate(packets)
                 if t == after["time"] and src == after["src"] and dport == after["dport"]), None)
    assert here is not None, f"no packet in {pcap} for decision {after}"
    net = ipaddress.ip_network(after.get("ban_network") or after["src"], strict=False)
    return sum(1 for _, src, dport in packets[here + 1:] if dport in ports and ipaddress.ip_address(src) in net)


def test_manifest_lists_exactly_the_copied_captures() -> None:
    copied = {p.name for p in PCAPS.glob("*.pcap")}
    assert set(MANIFEST) == copied
    assert {f"{name}.pcap" for name in REQUIRED} <= copied
    for row in MANIFEST.values():
        assert row["source_repo"] and row["source_commit"] and row["source_path"] and row["source_license"]


def test_every_copied_capture_has_a_case() -> None:
    assert {c["pcap"] for c in CASES} == set(MANIFEST)
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", case_params(CASES))
def test_shared(case: dict[str, Any], tmp_path: Path) -> None:
    pcap = case["pcap"]
    expect = [dict(e) for e in case["expect"]]
    addresses = {i: e.pop("address") for i, e in enumerate(expect) if "address" in e}
    for address in addresses.values():
        assert address in envelope(MANIFEST[pcap]), f"{address} is not an envelope address of {pcap}"

    result = replay(PCAPS / pcap, tmp_path, domains=case["domains"], payload=case.get("payload"),
                    config=case.get("config"), args=case.get("args"))

    # resolve count = "rest" against the capture; note the line each expectation starts at
    ports = protected_ports(case.get("config"))
    line, first_line = 0, {}
    for i, e in enumerate(expect):
        first_line[i] = line
        if e.get("count") == "rest":
            # the packets after the previous decision (none: 0, and check() reports the difference)
            before = result.decisions[line - 1] if 0 < line <= len(result.decisions) else None
            e["count"] = rest_of_source(pcap, before, ports) if before else 0
        line += e.get("count", 1)
    check(result, expect, case.get("summary"))

    for i, address in addresses.items():
        match = result.decisions[first_line[i]]["match"]
        assert match.split()[0].strip("<>").lower() == address.lower(), f"{match!r} is not <{address}>"
