"""Policy refusals through the live kernel path (issue 12, kind 2): Postfix refuses a recipient for
policy, so it refuses the DATA and reads what follows as commands; only its replies say so.

The server namespace runs Postfix (as the differential harness does), ``setup-nfqueue.sh install
--workers 2`` (with the reply mark: INSPECTOR-REPLY queues the server's payload of connections the
inspector marks, to the worker of their client packets) and ``inspector run`` in each decide
mode.  The differential sender plays each case from a fresh client address.  A case passes when
Postfix queued no blocked recipient and the inspector gave a ``domain`` verdict exactly for the
sessions whose case says Postfix would have queued one.
Run alone: ``sudo .venv/bin/python -m pytest tests/e2e/test_differential_live.py -q -s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .bed import NamespaceUnavailable
from .bed import why_not as bed_why_not
from .differential.cases import policy
from .differential.harness import BLOCKED, LOCAL_DOMAIN, DiffBed, Outcome
from .mta import why_not as mta_why_not

pytestmark = [pytest.mark.e2e, pytest.mark.differential]

CASES = [c for c in policy() if c.name in ("k2-policy-unknown-user-then-blocked", "k2-policy-pipelined-one-segment",
                                           "k2-policy-window-cut-echo-354", "k2-policy-refused-then-real-body")]
MODES = ("early", "depth")


@pytest.fixture(scope="module")
def live_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int, str], Outcome]]:
    reason = bed_why_not() or mta_why_not()
    if reason:
        pytest.skip(reason)
    workdir: Path = tmp_path_factory.mktemp("differential-live")
    # every IPv6 session from its own /64 (the inspector bans a /64), all of them allowed to relay
    diff = DiffBed(workdir, main={"mynetworks": "198.51.100.0/24 [2001:db8:1::]/48"})
    diff.v6_own_64 = True
    try:
        try:
            diff.up()
        except NamespaceUnavailable as e:
            pytest.skip(str(e))
        bed = diff.bed
        # two workers: IPv4 is spread over two queues by address pair, so the server's packets of a
        # connection must reach the worker that reads its client packets (the symmetric hash); a
        # legitimate message's body read as commands would block its body line and fail the case
        bed.install("--workers", "2")
        results: dict[tuple[str, int, str], Outcome] = {}
        for mode in MODES:
            bed.write_config(domains="".join(f"{d}\n" for d in BLOCKED),
                             extra=f'[stream]\ndecide = "{mode}"\n[smtp]\nlocal_domains = ["{LOCAL_DOMAIN}"]\n')
            bed.start_inspector()
            try:
                # once each (no retry from a fresh address: here a blocked session is the expected result)
                for o in diff._run_once(CASES, (4, 6), ()):
                    o.engine[mode] = bool(bed.events(event="verdict", src=o.src, reason="domain"))
                    results[(o.case.name, o.family, mode)] = o
            finally:
                # queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence ...
                table = bed.s("cat", "/proc/net/netfilter/nfnetlink_queue", check=False).stdout.split("\n")
                seen = {int(f[0]): int(f[7]) for f in (line.split() for line in table) if len(f) > 7}
                bed.stop_inspector()
            assert len(seen) == 2 and all(seen.values()), f"both queues should have had packets: {seen}"
        for tool in ("iptables", "ip6tables"):
            listing = bed.s(tool, "-L", "INSPECTOR-REPLY", "-v", "-n", "-x").stdout.splitlines()
            queued = sum(int(line.split()[0]) for line in listing if "NFQUEUE" in line)
            # the legitimate message's 354 moved its connection into the body on the server's packet
            into_body = sum(int(line.split()[0]) for line in listing if "xset 0x20000000/0x30000000" in line)
            assert queued > 0 and into_body > 0, f"{tool}: server packets queued {queued}, 354s {into_body}:\n" \
                + "\n".join(listing)
        print("\n".join(f"live {mode}: {o.describe(mode)} synack={o.client.get('synack')}"
                        for (_, _, mode), o in results.items()))
        yield results
    finally:
        diff.close()


@pytest.mark.parametrize(("name", "family", "mode"),
                         [pytest.param(c.name, f, m, id=f"{c.name}-v{f}-{m}") for c in CASES for f in c.families
                          for m in MODES])
def test_live_inspector_stops_what_postfix_would_queue(live_outcomes: dict[tuple[str, int, str], Outcome],
                                                       name: str, family: int, mode: str) -> None:
    o = live_outcomes[(name, family, mode)]
    assert o.client.get("synack"), o.client
    assert not o.blocked_accepted, f"Postfix queued a blocked recipient past the inspector: {o.describe(mode)}\n" \
        + "\n".join(o.log)
    assert o.engine[mode] == o.case.postfix_accepts, o.describe(mode) + "\n" + str(o.client.get("reply")) \
        + "\n" + "\n".join(o.log)
