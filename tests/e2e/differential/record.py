"""Record the differential cases as captures with Postfix's verdict (root, namespaces, postfix).

``sudo .venv/bin/python -m tests.e2e.differential.record [DEST]`` (default
``tests/pcaps/differential``): runs every case of ``cases.py`` against a real Postfix
(IPv4 and IPv6), copies each session's client-side capture and its two-sided capture
(``*-replies.pcap``: the server's frames too) to DEST and writes
``DEST/expected.toml``: per capture, the recipients Postfix delivered and whether one
of them is blocked.  ``tests/test_differential_pcaps.py`` replays them through the
engine (both decide modes) everywhere, without root.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from .cases import all_cases
from .harness import BLOCKED, DiffBed

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "pcaps" / "differential"
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diff-record-"))
    bed = DiffBed(work)
    try:
        bed.up()
        outcomes = bed.run(all_cases(), modes=())
    finally:
        bed.close()
    lines = ["# Written by tests/e2e/differential/record.py: what Postfix 3.7 on Linux did with each",
             "# capture's segments (the truth the engine is checked against).",
             f"blocked = {json.dumps(list(BLOCKED))}", ""]
    for o in outcomes:
        name = f"{o.case.name}-v{o.family}.pcap"
        shutil.copy(o.pcap, dest / name)
        both = f"{o.case.name}-v{o.family}-replies.pcap"
        assert o.pcap_replies is not None
        shutil.copy(o.pcap_replies, dest / both)
        recipients = json.dumps(sorted(o.recipients), ensure_ascii=False)
        lines += ["[[capture]]", f'file = "{name}"', f'replies_file = "{both}"',
                  f"replies_only = {'true' if o.case.replies_only else 'false'}",
                  f'case = "{o.case.name}"', f'kind = "{o.case.kind}"',
                  f"family = {o.family}", f"postfix_recipients = {recipients}",
                  f"blocked_accepted = {'true' if o.blocked_accepted else 'false'}", ""]
    (dest / "expected.toml").write_text("\n".join(lines), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(outcomes)} captures written to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
