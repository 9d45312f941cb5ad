"""Fixtures of the end-to-end suite; see bed.py for the layout.

* ``net``: the two namespaces, the veth pair and the servers, no firewall.
* ``bed``: ``net`` plus some pre-existing rules of the administrator and the
  setup script's ``install`` (whitelisting 203.0.113.0/24 and 2001:db8:ffff::/48).
* ``live``: ``bed`` plus a running ``inspector run`` (enforce mode).

Everything is torn down after each test, also after a failure; then the
inspector's stderr, its events, the servers' log and the firewall are printed
(pytest shows them with the failure).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from .bed import SETUP, Bed, NamespaceUnavailable, why_not

B = TypeVar("B", bound=Bed)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests in network namespaces (root)")
    config.addinivalue_line("markers", "measurement: end-to-end measurements (small, bounded; run in CI too)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@contextmanager
def bed_up(bed: B, request: pytest.FixtureRequest | None = None, servers: bool = True,
           extra_reason: str | None = None) -> Iterator[B]:
    """Bring ``bed``'s namespaces up (skip with the reason where that cannot be done here), start
    its test servers unless ``servers`` is false, and tear it all down afterwards; a failed test's
    diagnostics are printed when ``request`` is given."""
    reason = extra_reason or why_not()
    if reason:
        pytest.skip(reason)
    try:
        try:
            bed.up()
        except NamespaceUnavailable as e:
            pytest.skip(str(e))
        if servers:
            bed.start_servers()
        yield bed
    finally:
        try:
            if request is not None and _failed(request):
                print(bed.diagnostics())
        finally:
            bed.close()


@pytest.fixture
def net(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bed]:
    with bed_up(Bed(tmp_path), request) as bed:
        yield bed


@pytest.fixture
def bed(net: Bed) -> Bed:
    if not SETUP.exists():
        pytest.fail(f"{SETUP.relative_to(SETUP.parents[1])} is missing")
    net.preexisting_rules()
    net.install()
    return net


@pytest.fixture
def live(bed: Bed) -> Bed:
    bed.start_inspector()
    return bed
