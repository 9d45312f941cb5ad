"""A containerised MTA behind Docker-style NAT: ``setup-nfqueue.sh install --chain DOCKER-USER``.

Layout: the bed's server namespace plays the Docker host (the setup script's
rules, ``inspector run``) and a third namespace the container, joined to the
host by a bridge (``br-mail``) as ``docker0`` joins containers::

    client ns --veth-- host ns 192.0.2.25, 2001:db8::25  --br-mail-- container ns
                                198.18.0.1, 2001:db8:d0c::1           198.18.0.2, 2001:db8:d0c::2
                                                                      (SMTP on 25, "SSH" on 22)

The host publishes the container's ports 25 and 22 as Docker does: ``nat
PREROUTING -m addrtype --dst-type LOCAL -j DOCKER`` with a DNAT per port, and
``FORWARD`` jumping to ``DOCKER-USER`` (empty but for ``RETURN``) and then
accepting what goes to the container.  The inspector sees the client's
packets in FORWARD, already DNAT'ed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .bed import BLOCKED, CLIENTS, DAY, HERE, PY, Bed, NamespaceUnavailable, ban_network
from .conftest import bed_up
from .test_inspector import assert_reset_both_ways, wait_banned

pytestmark = pytest.mark.e2e

CONTAINER = {4: "198.18.0.2", 6: "2001:db8:d0c::2"}
BRIDGE = {4: "198.18.0.1", 6: "2001:db8:d0c::1"}
V = pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])


class DockerBed(Bed):
    """The bed with the servers moved into a container namespace behind the host's NAT."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.container = self.server.replace("e2e-s-", "e2e-k-")

    def up(self) -> None:
        super().up()
        r = self._run_root(["ip", "netns", "add", self.container])
        if r:
            raise NamespaceUnavailable(r)
        self.stack.callback(self._run_root, ["ip", "netns", "del", self.container])
        h, k = self.server, self.container
        self._run_root(["ip", "link", "add", "veth-k", "netns", h, "type", "veth", "peer", "name", "eth0",
                        "netns", k])
        cmds = [
            (k, "ip link set lo up"),
            (k, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"),
            (h, "ip link add br-mail type bridge"),
            (h, "ip link set veth-k master br-mail"),
            (h, "ip addr add 198.18.0.1/24 dev br-mail"),
            (h, "ip addr add 2001:db8:d0c::1/64 dev br-mail nodad"),
            (h, "ip link set br-mail up"),
            (h, "ip link set veth-k up"),
            (k, "ip addr add 198.18.0.2/24 dev eth0"),
            (k, "ip addr add 2001:db8:d0c::2/64 dev eth0 nodad"),
            (k, "ip link set eth0 up"),
            (k, "ip route add default via 198.18.0.1"),
            (k, "ip -6 route add default via 2001:db8:d0c::1"),
            (h, "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"),
        ]
        for ns, cmd in cmds:
            self._run(ns, cmd.split(), True, 10)
        # Docker's rules for a container publishing 25 and 22 (iptables and ip6tables alike)
        for tool, v in (("iptables", 4), ("ip6tables", 6)):
            for rule in (
                "-t nat -N DOCKER",
                "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                "-t nat -A DOCKER -i br-mail -j RETURN",
                f"-t nat -A DOCKER -p tcp --dport 25 -j DNAT --to-destination {_hostport(v, 25)}",
                f"-t nat -A DOCKER -p tcp --dport 22 -j DNAT --to-destination {_hostport(v, 22)}",
                "-N DOCKER",
                "-N DOCKER-USER",
                "-A DOCKER-USER -j RETURN",
                "-P FORWARD DROP",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -o br-mail -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A FORWARD -o br-mail -j DOCKER",
                "-A FORWARD -i br-mail -j ACCEPT",
                f"-t nat -A POSTROUTING -s {CONTAINER[v]} ! -o br-mail -j MASQUERADE",
                f"-A DOCKER -d {CONTAINER[v]} ! -i br-mail -p tcp -m multiport --dports 25,22 -j ACCEPT",
            ):
                self.s(tool, *rule.split())

    def _run_root(self, argv: list[str]) -> str:
        import subprocess

        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return r.stderr.strip() if r.returncode else ""

    def start_servers(self, timeout: float = 10) -> None:
        # the servers run in the container: swap the namespace for the spawn only
        host, self.server = self.server, self.container
        try:
            super().start_servers(timeout)
        finally:
            self.server = host


def _hostport(v: int, port: int) -> str:
    return f"{CONTAINER[v]}:{port}" if v == 4 else f"[{CONTAINER[v]}]:{port}"


@pytest.fixture
def docker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DockerBed]:
    with bed_up(DockerBed(tmp_path), request) as bed:
        yield bed


@V
def test_published_port_reaches_the_container_without_the_inspector(docker: DockerBed, v: int) -> None:
    """The bed itself: the client's mail crosses the DNAT to the container (the server sees the client)."""
    a = CLIENTS[v]["a"]
    assert docker.smtp(a)["delivered"]
    assert docker.server_events(event="message", peer=a)


@pytest.mark.parametrize("how", [["--chain", "DOCKER-USER"], ["--forward"], ["--chain", "INPUT,DOCKER-USER"]],
                         ids=["docker-user", "forward", "input-and-docker-user"])
def test_install_in_docker_user_and_remove_restores(docker: DockerBed, how: list[str]) -> None:
    before = docker.snapshot_rules()
    docker.install(*how)
    chain = "FORWARD" if how == ["--forward"] else "DOCKER-USER"
    for tool in ("iptables", "ip6tables"):
        user = docker.s(tool, "-S", chain).stdout.splitlines()
        assert user[1].endswith("-j INSPECTOR") and "--ctstate DNAT" in user[1] and "--ctdir ORIGINAL" in user[1], user
        # the server's side (--reply-mark): the reply direction of the same connections, right after it
        assert user[2].endswith("-j INSPECTOR-REPLY") and "--sports" in user[2] and "--ctdir REPLY" in user[2], user
        assert ("INSPECTOR" in docker.s(tool, "-S", "INPUT").stdout) == ("INPUT" in how[-1])
    docker.setup("remove")
    docker.installed = False
    assert docker.snapshot_rules() == before


def test_missing_chain_is_a_clear_error_and_changes_nothing(net: Bed) -> None:
    before = net.snapshot_rules()
    r = net.setup("install", "--chain", "DOCKER-USER", "--no-ssh-whitelist", check=False)
    assert r.returncode != 0 and "no chain DOCKER-USER" in r.stderr, r.stderr
    assert net.snapshot_rules() == before
    assert "inspector-ban4" not in net.s("ipset", "list", "-n").stdout


@V
def test_container_mta_is_inspected_reset_both_ways_and_banned(docker: DockerBed, v: int) -> None:
    docker.install("--chain", "DOCKER-USER")
    docker.start_inspector()
    a, b = CLIENTS[v]["a"], CLIENTS[v]["b"]
    clean = docker.smtp(b, ["user@example.org"], body_size=20000)
    assert clean["delivered"], clean
    r = docker.smtp(a, [f"someone@{BLOCKED}"], timeout=3)
    # the client's stack accepted the RST: it came from the address and port the client used
    assert_reset_both_ways(docker, r)
    assert r["error"] == "reset", r  # not a close: an RST the client's stack took as its peer's
    assert docker.server_events(event="rcpt", peer=a) == []
    assert DAY - 30 <= wait_banned(docker, a) <= DAY
    # the ban holds in FORWARD: the next connection times out, the other client still gets through
    again = docker.connect(a, 25, timeout=1)
    assert again["error"] == "timeout", again
    assert docker.smtp(b)["delivered"]
    # the decided clean connection stayed in the kernel after its verdict (connmark bypass)
    tool = "iptables" if v == 4 else "ip6tables"
    listing = docker.s(tool, "-L", "INSPECTOR", "-v", "-n", "-x").stdout
    # the decided (bypass) connmark rule; the SMTP in-body rules match another mark bit
    [rule] = [line for line in listing.splitlines() if "connmark match" in line and "0x40000000" in line]
    assert int(rule.split()[0]) > 0, listing
    # the container's replies reached the inspector in the reply direction (--ctdir REPLY): the clean
    # message's 354 moved its connection into the body on the server's packet
    replies = docker.s(tool, "-L", "INSPECTOR-REPLY", "-v", "-n", "-x").stdout.splitlines()
    queued = sum(int(line.split()[0]) for line in replies if "NFQUEUE" in line)
    into_body = sum(int(line.split()[0]) for line in replies if "xset 0x20000000/0x30000000" in line)
    assert queued > 0 and into_body > 0, "\n".join(replies)


def test_containers_outgoing_mail_is_not_inspected(docker: DockerBed) -> None:
    """The container sending mail out (to port 25 elsewhere) does not jump into INSPECTOR."""
    docker.install("--chain", "DOCKER-USER")
    docker.start_inspector()
    assert docker.smtp(CLIENTS[4]["b"])["delivered"]
    # a listener on the client side plays the remote MX; the container connects out through the host
    sink = docker._spawn("sink", docker.client, [PY, str(HERE / "servers.py"), str(docker.dir / "remote.jsonl"),
                                                  "--max-seconds", "60"], stdout_pipe=True)
    docker.stack.callback(sink.stop)
    assert sink.popen.stdout is not None and sink.popen.stdout.readline()
    r = docker._run(docker.container, [PY, str(HERE / "client.py"), '[{"op": "smtp", "dst": "198.51.100.10", '
                                      f'"rcpts": ["x@{BLOCKED}"], "timeout": 3}}]', "20"], True, 30)
    assert '"delivered": true' in r.stdout, r.stdout
    listing = docker.s("iptables", "-L", "DOCKER-USER", "-v", "-n", "-x").stdout
    [jump] = [line for line in listing.splitlines() if line.split()[2:3] == ["INSPECTOR"]]
    assert docker.banned(CONTAINER[4]) is None
    assert ban_network(CONTAINER[4]) not in docker.ipset("inspector-ban4")
    assert int(jump.split()[0]) > 0  # the inbound mail above did jump
