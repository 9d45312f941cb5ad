"""The differential harness (issue 12): Postfix behind a real Linux stack vs the engine.

Run alone (root, network namespaces, Debian's postfix package)::

    sudo .venv/bin/python -m pytest tests/e2e -m differential -q

All cases are sent once per module (IPv4 and IPv6), then each case is checked in
both decide modes.  A case passes when the engine blocks exactly the sessions in
which Postfix accepted a blocked recipient.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .bed import NamespaceUnavailable
from .bed import why_not as bed_why_not
from .differential.cases import all_cases
from .differential.harness import REPLIES, Case, DiffBed, Outcome
from .mta import why_not as mta_why_not

pytestmark = [pytest.mark.e2e, pytest.mark.differential]

CASES: list[Case] = all_cases()
# client-only captures (as the queue sees a connection without the reply mark) and two-sided ones
MODES = ("early", "depth", "early" + REPLIES, "depth" + REPLIES)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int], Outcome]]:
    reason = bed_why_not() or mta_why_not()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("differential")
    bed = DiffBed(workdir)
    try:
        try:
            bed.up()
        except NamespaceUnavailable as e:
            pytest.skip(str(e))
        results = bed.run(CASES, modes=MODES)
        report = workdir / "report.txt"
        text = "\n".join(o.describe(m) for o in results for m in MODES) + "\n"
        report.write_text(text)
        print(f"differential report ({report}):\n{text}")  # shown with -s
        yield {(o.case.name, o.family): o for o in results}
    finally:
        bed.close()


def _params() -> list[object]:
    out = []
    for case in CASES:
        for fam in case.families:
            for mode in MODES:
                if case.replies_only and REPLIES not in mode:
                    continue  # the remaining limit without the server's replies (README)
                out.append(pytest.param(case.name, fam, mode, id=f"{case.name}-v{fam}-{mode}"))
    return out


@pytest.mark.parametrize(("name", "family", "mode"), _params())
def test_engine_blocks_what_postfix_accepted(outcomes: dict[tuple[str, int], Outcome], name: str, family: int,
                                            mode: str) -> None:
    o = outcomes[(name, family)]
    assert o.client.get("synack"), f"{name}: no SYN-ACK from the server: {o.client}"
    if o.case.postfix_accepts is not None:
        assert o.blocked_accepted == o.case.postfix_accepts, (
            f"broken case (Postfix did not do what the case expects): {o.describe(mode)}\n{o.client.get('reply')}\n"
            + "\n".join(o.log))
    assert o.agrees(mode), o.describe(mode) + "\n" + str(o.client.get("reply")) + "\n" + "\n".join(o.log)


@pytest.mark.parametrize("family", [4, 6])
def test_window_cut_case_really_cuts_the_reply_at_the_echoed_354(outcomes: dict[tuple[str, int], Outcome],
                                                                 family: int) -> None:
    """The case is only worth its name if the server did start a segment with the echoed "354 ": check the
    two-sided capture (the engine's agreement is checked above)."""
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    o = outcomes[("k2-policy-window-cut-echo-354", family)]
    assert o.pcap_replies is not None
    starts = [bytes(p[TCP].payload)[:60] for p in rdpcap(str(o.pcap_replies))
              if TCP in p and p[TCP].sport == 25 and bytes(p[TCP].payload)]
    assert any(s.startswith(b"354 End data with <CR><LF>.<CR><LF>@unknown") for s in starts), starts
