"""The inspection engine: packet bytes and a timestamp in, a verdict out.

Pure and deterministic: no I/O, no clock (time comes with each packet), no
global state.  The NFQUEUE service, ``inspector replay`` and the tests all
drive this same object.

Per packet: decode → ban check → TCP flag sanity → flow lookup → on a SYN,
the connection-rate limit → client stream reassembly → the flow's detector
(SMTP envelope or payload strings).  Server→client packets, where a capture
has them, prove handshakes and end flows; SMTP replies are read where the
server's word decides (does a DATA start a body?): live, the kernel queues
them while a connection has the reply mark (see :meth:`Engine.watch_replies`).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from .config import Config, RateRule
from .detect.rate import RateLimiter
from .detect.smtp import BODY, CHUNK, COMMAND, PENDING, SmtpSession
from .flow import KIND_PAYLOAD, KIND_SMTP, Embryo, Flow, FlowTable
from .nets import Whitelist, mask_address, network_text
from .packet import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Malformed,
    decode,
    flag_anomaly,
    format_addr,
    syn_options,
    tcp_ack,
    timestamp,
    urgent_seq,
)
from .rules import RuleSet
from .stream import Stream
from .verdict import (
    ACCEPT,
    ACCEPT_BODY,
    ACCEPT_REPLIES,
    ACCEPT_RESUME,
    BYPASS,
    Action,
    Decision,
    Fields,
    Reason,
    Verdict,
)

__all__ = ["Engine", "Decision"]

_XMAS = FIN | PSH | URG
# an end-of-data line, or the start of one, anywhere in a segment (see Engine._body_gap)
_MAY_END_DATA = re.compile(rb"(?:^|\n)\.\r*(?:\n|$)")
_HANDSHAKE_HOLD = 63.0  # s: Linux gives up on a SYN-ACK after 5 retries (tcp_synack_retries: 1+2+4+8+16+32)
# flag combinations conntrack accepts, PSH aside (see packet.flag_anomaly)
_VALID_FLAGS = frozenset((0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30))


class Engine:
    """Stateful per-packet inspection; see the module docstring."""

    def __init__(self, config: Config, rules: RuleSet,
                 protects: Callable[[str], str | None] | None = None) -> None:
        """``protects(network)`` says why a network must never be banned (``nets.protects``),
        or ``None``; the engine also never bans a network holding the packet's destination
        (the server's own address, and for IPv6 its own /64)."""
        self.config = config
        self.rules = rules
        self.flows = FlowTable(config.max_flows, config.flow_idle)
        self.bans: dict[bytes, tuple[float, str]] = {}  # ban key -> (expiry, reason)
        self.counts: Counter[str] = Counter()
        self.packets = 0
        self._alert = config.alert
        self._depth = config.depth
        self._bypass_early = config.decide == "early"  # [stream] decide: SMTP bodies skipped, not bypassed
        self._smtp = config.smtp
        self._kind = {p: KIND_SMTP for p in config.smtp_ports}
        for p in config.other_ports:
            self._kind.setdefault(p, KIND_PAYLOAD)
        self._prefix = {4: config.ipv4_prefix, 16: config.ipv6_prefix}  # by address length
        # by address length: is the ban/rate key the raw address itself?
        self._raw_key = {4: config.ipv4_prefix == 32, 16: config.ipv6_prefix == 128}
        self._limiters: dict[int, tuple[RateLimiter, RateRule]] = {}
        shared: dict[RateRule, RateLimiter] = {}
        for port in config.ports:
            for rule in config.rates:
                if rule.ports is None or port in rule.ports:
                    limiter = shared.setdefault(rule, RateLimiter(rule.limit, rule.window, config.rate_capacity))
                    self._limiters[port] = (limiter, rule)
                    break
        self.whitelist = Whitelist(config.whitelist, loopback=False)
        self._two_sided = False  # server -> client packets seen: the view shows handshakes
        # (see :meth:`expect_server_packets`: a capture that holds them says so before its first packet)
        self._protects = protects
        self._replies = False  # SMTP: the server's replies are seen (see watch_replies)
        self._live_replies = False  # live: server packets come only through the reply mark (no handshakes)

    # -- public -------------------------------------------------------------

    def process(self, data: bytes, now: float) -> Decision:
        """Inspect one IP datagram received at ``now`` (seconds); never raises.

        Returns :data:`~inspector.verdict.ACCEPT`, :data:`~inspector.verdict.BYPASS` (accept,
        and the rest of the flow bypasses inspection), or a :class:`~inspector.verdict.Decision`
        with the non-accept verdict, the packet's facts and its decoded fields."""
        self.packets += 1
        try:
            d = decode(data)
            if d is None:
                self.counts["not-tcp"] += 1
                return ACCEPT
            key, src, sport, dport, seq, flags, poff, pend = d
            kind = self._kind.get(dport)
            if kind is None:
                if sport in self._kind:  # server -> client: handshakes, SMTP replies, the end of flows
                    self.counts["server"] += 1
                    return self._server(key, len(src), seq, flags, pend - poff, data, poff)
                else:
                    self.counts["other-port"] += 1
                return ACCEPT

            bans = self.bans
            if bans:
                bkey = src if self._raw_key[len(src)] else self.ban_key(src)
                ban = bans.get(bkey)
                if ban is not None:
                    if now < ban[0]:
                        return self._decide(Verdict(Action.DROP, Reason.BANNED, detail=ban[1]), data, d, now)
                    del bans[bkey]
                    self.counts["bans-expired"] += 1

            f = flags & 0x3F
            if f & ~PSH not in _VALID_FLAGS:
                return self._flags(data, d, now, flag_anomaly(f) or "invalid")
            if f & SYN:
                if f & ACK:  # a SYN-ACK towards a protected port is not a new connection
                    return ACCEPT
                return self._syn(key, seq, data, poff, pend, now)

            table = self.flows
            flows = table.flows
            flow = flows.get(key)
            if flow is None:
                proven = self._prove(key, src, dport, seq, f, kind, data, d, poff, pend, now)
                if proven is None:
                    return ACCEPT
                if isinstance(proven, Decision):
                    return proven
                flow = proven
            else:
                flow.last = now
                flows.move_to_end(key)
                if flow.reopen is not None and seq == flow.reopen:
                    return self._reopened(key, flow, data, d, now)
            if now >= table.next_sweep:
                table.sweep(now)

            decision = ACCEPT
            if pend > poff:
                if not flow.done and not f & RST:  # Linux takes no data from a RST
                    decision = self._inspect(flow, seq, f, data[poff:pend], data, d, dport, poff, now)
                if decision is ACCEPT and flow.done and not flow.blocked:
                    decision = BYPASS
            elif flow.tsval is not None and not flow.done and f & ACK:
                self._pure_ack(flow, seq, data, poff)
            if f & (FIN | RST) and self._ends(flow, seq, pend - poff):
                flows.pop(key, None)
            return decision
        except Malformed as e:
            self.counts["malformed"] += 1
            self.counts["malformed:" + e.args[0]] += 1
            return self._decide(Verdict(Action.DROP, Reason.MALFORMED, detail=e.args[0]), data, None, now)
        except Exception as e:  # noqa: BLE001 - the loop must survive any bug: fail open, counted
            self.counts["engine-error"] += 1
            self.counts["engine-error:" + type(e).__name__] += 1
            return ACCEPT

    def swap_rules(self, rules: RuleSet) -> None:
        """Use a new rule set from the next packet on (flows keep their state)."""
        self.rules = rules

    def ban_key(self, addr: bytes) -> bytes:
        """The ban/rate key of a raw source address (see :func:`mask_address`)."""
        return mask_address(addr, self._prefix[len(addr)])

    def add_ban(self, network: str, expires: float, reason: str = "restored") -> None:
        """Record a ban (e.g. restored from the state file) so replay and live agree."""
        net = ipaddress.ip_network(network, strict=False)
        self.bans[self.ban_key(net.network_address.packed)] = (expires, reason)

    def remove_ban(self, network: str) -> bool:
        """Forget the ban covering ``network`` (after ``inspector unban``); True if there was one."""
        net = ipaddress.ip_network(network, strict=False)
        return self.bans.pop(self.ban_key(net.network_address.packed), None) is not None

    def stats(self) -> dict[str, object]:
        """Counters for ``status``: packets, flows (active, evicted, expired), handshakes, malformed packets,
        bans, rate-limit sources, and every named count.
        """
        return {
            "packets": self.packets,
            "flows": self.counts["flows"],
            "flows_active": len(self.flows),
            "flows_evicted": self.flows.evicted,
            "flows_evicted_open": self.flows.evicted_open,
            "handshakes_pending": len(self.flows.embryos),
            "handshakes_evicted": self.flows.embryos_evicted,
            "flows_expired": self.flows.expired,
            "malformed": self.counts["malformed"],
            "bans_active": len(self.bans),
            "rate_sources": sum(len(lim) for lim, _ in {id(v[0]): v for v in self._limiters.values()}.values()),
            "counts": dict(sorted(self.counts.items())),
        }

    # -- the data path --------------------------------------------------------

    def _syn(self, key: bytes, seq: int, data: bytes, poff: int, pend: int, now: float) -> Decision:
        """A client SYN: a handshake starts.  It proves nothing (anyone can forge one), so it
        never counts towards a rate, never creates or replaces a flow and never decides one:
        it only records the ISN, where Linux starts the stream (``tcp_rsk(req)->rcv_isn``)."""
        table = self.flows
        flow = table.flows.get(key)
        if flow is not None:
            if flow.isn == seq:
                flow.last = now  # a retransmitted SYN is not a new connection
                return ACCEPT
            if not flow.done:
                # RFC 5961 section 4.2: an open connection answers a SYN with a challenge ACK and
                # stays as it was.  Which one the next data belongs to is settled in _reopened.
                self.counts["syn-on-open-flow"] += 1
                flow.reopen = (seq + 1) & 0xFFFFFFFF
            else:
                del table.flows[key]  # nothing left to inspect there: the 4-tuple may be reused
        embryos = table.embryos
        embryo: Embryo | None = embryos.get(key)
        if embryo is not None:
            isn, tsval, last, server_isn, server_next, refused = embryo
            if isn == seq:  # retransmitted
                embryos[key] = (isn, tsval, now, server_isn, server_next, refused)
                return ACCEPT
            if not refused and now - last < _HANDSHAKE_HOLD:
                # Linux keeps the first request: another SYN on the 4-tuple is answered with an
                # ACK and dropped (tcp_check_req, out of window), or kills the request (in window)
                self.counts["syn-on-handshake"] += 1
                return ACCEPT
            del embryos[key]  # the new one goes to the end
        if poff > 40 or data[0] != 0x45:  # options past the TCP header (behind a 20-byte IPv4 header)
            tsval, cookie = syn_options(data, poff)
        else:
            tsval, cookie = None, False
        if pend > poff:
            # Linux delivers data on a SYN only with a valid Fast Open cookie on a listener that
            # enabled Fast Open (RFC 7413; tcp_fastopen_create_child); neither Postfix nor OpenSSH
            # does.  It is not part of the stream: the stream starts at ISN + 1 whatever it held.
            self.counts["syn-data-ignored"] += 1
            if cookie:
                self.counts["syn-data-fastopen-cookie"] += 1
        embryos[key] = (seq, tsval, now, None, 0, False)
        if len(embryos) > table.max_embryos:
            table.evict_embryo()
        if table.tombstones:
            table.tombstones.pop(key, None)  # a new connection on the 4-tuple of an evicted one
        self.counts["handshakes"] += 1
        if now >= table.next_sweep:
            table.sweep(now)
        return ACCEPT

    @property
    def server_ports(self) -> frozenset[int]:
        """The protected ports: a TCP packet from one of them is server -> client."""
        return frozenset(self._kind)

    def expect_server_packets(self) -> None:
        """Tell the engine, before the first packet, that its view holds server -> client packets
        (a two-sided capture: replay checks the file first).  Without it the engine learns it at
        the first server packet, and a forged client packet before that would be judged by the
        client-only rule (its first ACK proves it), which a blind spoofer can meet.  The live
        queue shows no server packet of a handshake: the kernel proves connections there
        (conntrack).  The SMTP replies of the capture are then read too (:meth:`watch_replies`)."""
        self._two_sided = True
        self._replies = True

    def watch_replies(self) -> None:
        """SMTP: the server's replies will be seen, from the next session on: live, the kernel queues
        the server's payload segments of a connection while the engine keeps its reply mark set
        (:data:`~inspector.verdict.ACCEPT_REPLIES`, ``[service] reply_mark``); in replay, a
        two-sided capture holds them.  A DATA then starts a body only at the server's ``354``
        (:meth:`SmtpSession.server <inspector.detect.smtp.SmtpSession.server>`).  Live, a server
        packet is then no sign of a two-sided view: handshakes are still proven by the kernel."""
        self._replies = True
        self._live_replies = True

    def _server(self, key: bytes, alen: int, seq: int, flags: int, length: int, data: bytes,
                poff: int) -> Decision:
        """A server -> client packet (captures; live, only SMTP replies while the reply mark is set):
        the SYN-ACK and what the server sent are what a client's ACK must acknowledge to prove a
        flow; an SMTP session watching replies reads them (:meth:`_reply`)."""
        if not self._live_replies:
            self._two_sided = True
        rkey = key[alen:2 * alen] + key[:alen] + key[2 * alen + 2:] + key[2 * alen:2 * alen + 2]
        table = self.flows
        decision = ACCEPT
        if length and self._replies:
            flow = table.flows.get(rkey)
            if flow is not None and not flow.done and flow.state.__class__ is SmtpSession:
                decision = self._reply(flow, seq, data[poff:poff + length])
        embryo = table.embryos.get(rkey)
        if embryo is not None:
            isn, tsval, last, server_isn, server_next, refused = embryo  # (a tuple: replaced on change)
            if flags & RST:
                table.embryos[rkey] = (isn, tsval, last, server_isn, server_next, True)
            elif flags & SYN:
                if flags & ACK and tcp_ack(data) == (isn + 1) & 0xFFFFFFFF:
                    table.embryos[rkey] = (isn, tsval, last, seq, (seq + 1) & 0xFFFFFFFF, refused)
                    flow = table.flows.get(rkey)
                    if flow is not None:  # the server took the new connection: the old one is gone
                        del table.flows[rkey]
            elif server_isn is not None:
                end = (seq + length + (flags & FIN)) & 0xFFFFFFFF
                if 0 < ((end - server_next) & 0xFFFFFFFF) < 0x80000000:
                    table.embryos[rkey] = (isn, tsval, last, server_isn, end, refused)
            return decision
        if flags & (RST | FIN):
            table.flows.pop(rkey, None)
        return decision

    def _reply(self, flow: Flow, seq: int, payload: bytes) -> Decision:
        """Server bytes of an SMTP flow: read only while the kernel queues them (the session's
        ``kernel_replies``; replay mirrors the live view), then the kernel's marks are brought in step
        (a pending DATA's 354: the body, and in decide = "early" the in-body filter)."""
        session = flow.state
        assert isinstance(session, SmtpSession)
        if not session.kernel_replies:
            return ACCEPT
        if session.server(seq, payload):
            self.counts["smtp-354"] += 1
        stream = flow.stream
        return self._marks(session, stream is not None and stream.uncertain is None and flow.isn is not None)

    def _prove(self, key: bytes, src: bytes, dport: int, seq: int, f: int, kind: int, data: bytes,
               d: Fields, poff: int, pend: int, now: float) -> Flow | Decision | None:
        """A client packet of no known flow: is the connection proven?  ``None`` if not.

        Proven means the handshake completed: the client acknowledged the server's SYN-ACK
        (an ACK of something the server sent; a blind spoofer cannot see what to acknowledge).
        Where the view shows no server packets at all (the live queue, which the kernel fills
        only with packets of connections conntrack has seen complete the handshake, and
        client-only captures), the client's first ACK after its SYN is taken as that proof.
        The first proven packet counts the connection towards the source's rate."""
        table = self.flows
        if not f & ACK:
            return None  # Linux takes nothing from a segment without ACK (here: a bare RST)
        embryo = table.embryos.get(key)
        if embryo is not None:
            isn, tsval, _last, server_isn, server_next, refused = embryo
            if refused:
                return None
            if server_isn is not None:
                acked = (tcp_ack(data) - server_isn) & 0xFFFFFFFF
                if not 0 < acked <= ((server_next - server_isn) & 0xFFFFFFFF):
                    self.counts["unproven"] += 1
                    return None
            elif self._two_sided:
                self.counts["unproven"] += 1
                return None
            del table.embryos[key]
            flow = Flow(isn, (isn + 1) & 0xFFFFFFFF, kind, now, tsval)
        else:
            if table.tombstones.pop(key, None) is not None:
                # evicted while still under inspection: what it has sent so far is lost, so
                # nothing it sends next can be judged; end the connection rather than pass it
                self.counts["flows-evicted-reset"] += 1
                return self._stream_verdict("flow-evicted", data, d, now)
            if self._two_sided:
                self.counts["unproven"] += 1
                return None
            if pend == poff:
                return None  # a bare ACK/FIN/RST of a flow we do not know: nothing to inspect
            flow = Flow(None, seq, kind, now)
            self.counts["flows-midstream"] += 1
        table.add(key, flow)
        self.counts["flows"] += 1
        if flow.isn is None:
            # picked up midstream (opened before this engine started, or its handshake record was
            # pushed out by a flood of others): not counted as a new connection, as before
            return flow
        verdict = self._rate(flow, src, dport, data, d, now)
        return flow if verdict is ACCEPT else verdict

    def _rate(self, flow: Flow, src: bytes, dport: int, data: bytes, d: Fields, now: float) -> Decision:
        limiter = self._limiters.get(dport)
        if limiter is None:
            return ACCEPT
        lim, rule = limiter
        rkey = (src if self._raw_key[len(src)] else self.ban_key(src)) + dport.to_bytes(2, "big")
        count = lim.hit(rkey, now)
        if not count:
            return ACCEPT
        verdict = Verdict(Action.RESET, Reason.RATE, rule=f"{rule.limit}/{rule.window:g}s",
                          match=f"{count} new connections in {rule.window:g}s", ban=rule.ban)
        decided = self._decide(verdict, data, d, now)
        if decided is not ACCEPT:
            flow.done = flow.blocked = True
        return decided

    def _reopened(self, key: bytes, flow: Flow, data: bytes, d: Fields, now: float) -> Decision:
        """A packet at ISN + 1 of a SYN that came while this flow was open.  If the server still
        holds the old connection (RFC 5961: challenge ACK) it is old data; if the old connection
        was gone, a new one.  Only the server knows, and the view does not show which: both
        readings would be attacker-chosen, so the connection is reset instead."""
        self.counts["reopen-reset"] += 1
        self.flows.flows.pop(key, None)
        self.flows.embryos.pop(key, None)
        return self._stream_verdict("syn-on-open-flow", data, d, now)

    def _stream_verdict(self, detail: str, data: bytes, d: Fields, now: float) -> Decision:
        return self._decide(Verdict(Action.RESET, Reason.TCP_STREAM, detail=detail), data, d, now)

    def _pure_ack(self, flow: Flow, seq: int, data: bytes, poff: int) -> None:
        tsval = timestamp(data, poff)
        if tsval is not None:
            stream = flow.stream
            if stream is None:
                stream = flow.stream = self._stream(flow)
            stream.ack(seq, tsval)

    def _stream(self, flow: Flow) -> Stream:
        stream = Stream(flow.base, self._depth)
        if flow.tsval is not None:
            stream.timestamps(flow.tsval)
        return stream

    def _inspect(self, flow: Flow, seq: int, f: int, payload: bytes, data: bytes, d: Fields, dport: int,
                 poff: int, now: float) -> Decision:
        stream = flow.stream
        if stream is None:
            stream = flow.stream = self._stream(flow)
        state = flow.state
        if state is not None and self._bypass_early and state.__class__ is SmtpSession \
                and (state.mode != COMMAND or state.resumed):
            desync = self._body_gap(state, stream, seq, payload)
            if desync is not None:
                if desync.action is Action.RESET:
                    flow.done = flow.blocked = True
                self.counts["smtp-desync"] += 1
                return self._decide(desync, data, d, now)
        conflicts = stream.conflicts
        if flow.isn is None and stream.offset(seq) < 0:
            # picked up midstream, and this is earlier than the first segment seen: that one was
            # not the start of the stream, so what was read from it was not what the server reads
            flow.done = flow.blocked = True
            return self._stream_verdict("data-before-midstream-start", data, d, now)
        chunk = stream.push(seq, payload, timestamp(data, poff) if flow.tsval is not None else None,
                            urgent_seq(data, seq) if f & URG else None)
        if stream.conflicts != conflicts:
            self.counts["overlap-conflicts"] += 1
        if stream.ambiguous is not None:
            self.counts["stream-ambiguous"] += 1
            flow.done = flow.blocked = True
            return self._stream_verdict(stream.ambiguous, data, d, now)
        if not chunk:
            if stream.full:
                flow.done = True
            return ACCEPT
        rules = self.rules
        if flow.kind == KIND_SMTP:
            session = flow.state
            if not isinstance(session, SmtpSession):
                session = flow.state = SmtpSession(self._smtp, midstream=flow.isn is None, replies=self._replies)
            pipelined = session.pipelined
            hit = session.feed(chunk, rules.domains)
            if session.pipelined != pipelined:
                self.counts["smtp-pipelined-past-data"] += 1
            if hit is not None:
                flow.done = flow.blocked = True
                verdict = Verdict(Action.RESET, Reason.DOMAIN, rule=hit[0], match=hit[1],
                                  ban=self.config.ban_domain)
                return self._decide(verdict, data, d, now)
            if session.finished:
                flow.done = True
            matcher = rules.payload.get(dport)
        else:
            matcher = rules.payload_for(dport)
        if matcher is not None:
            pattern, flow.carry = matcher.scan(flow.carry, chunk)
            if pattern is not None:
                flow.done = flow.blocked = True
                verdict = Verdict(Action.RESET, Reason.PAYLOAD, rule=pattern, match=pattern,
                                  ban=self.config.ban_payload)
                return self._decide(verdict, data, d, now)
        if stream.full or (self._bypass_early and flow.kind != KIND_SMTP and b"\n" in chunk
                           and stream.uncertain is None and flow.isn is not None):
            flow.done = True  # early: the first line (an SSH banner) was seen
        if not flow.done:
            state = flow.state
            # in body only where the stream is certain (the tcp rules: a handshake seen, no uncertainty)
            if state.__class__ is SmtpSession and ((self._bypass_early and state.mode == BODY and not state.partial
                                                    and stream.uncertain is None and flow.isn is not None)
                                                   != state.kernel_body or state.watching or state.kernel_replies):
                return self._marks(state, stream.uncertain is None and flow.isn is not None)
        return ACCEPT

    @staticmethod
    def _body_gap(session: SmtpSession, stream: Stream, seq: int, payload: bytes) -> Verdict | None:
        """decide = "early", in a message: the kernel keeps body segments that cannot end it, so a
        gap before this segment is body the engine never sees (``Stream.skip_to``).  Message bytes
        do not count towards ``depth``: it bounds the command bytes of a session.

        Reordering cannot hide commands behind a skipped body: a queued segment that lands in a
        skipped stretch and may hold an end-of-data line means the engine read what follows as
        body while the server will read it as commands (reset, ``desync``); and once commands
        resumed after a body, a segment beyond a gap is dropped (the client sends it again) until
        the gap is filled, because the missing bytes may have passed the kernel unseen while the
        connection was marked in body.
        """
        off = stream.offset(seq)
        length = len(payload)
        skipped = session.skipped
        if skipped and off < stream.delivered:
            end = off + length
            for low, high in skipped:
                if off < high and end > low and _MAY_END_DATA.search(payload) is not None:
                    return Verdict(Action.RESET, Reason.DESYNC,
                                   detail="a reordered segment may end the data the engine skipped")
        mode = session.mode
        if mode == BODY:
            if off > stream.delivered and session.kernel_body:
                low = stream.delivered
                gap = stream.skip_to(off)
                if skipped is None:
                    skipped = session.skipped = []
                skipped.append((low, off))
                if len(skipped) > 64:
                    del skipped[0]
                session.skip(gap)
                stream.depth += gap
            stream.depth += length
        elif mode == CHUNK:
            stream.depth += length
        elif (mode == COMMAND or (mode == PENDING and session.resumed)) and off > stream.delivered:
            return Verdict(Action.DROP, Reason.DESYNC, detail="a gap after a body: resent once the gap is filled")
        return None

    def _marks(self, session: SmtpSession, certain: bool = True) -> Decision:
        """The accept that keeps the connection's marks in step with the session: one of three
        states, each verdict naming the whole state (the chain sets one bit and clears the other):
        in body (:data:`ACCEPT_BODY`, decide = "early" only, never while the stream is not
        ``certain``: every segment is then queued), replies watched (:data:`ACCEPT_REPLIES`: the
        server's packets are queued too), or neither (:data:`ACCEPT_RESUME`)."""
        body = self._bypass_early and certain and session.in_body
        replies = not body and session.wants_replies
        if body == session.kernel_body and replies == session.kernel_replies:
            return ACCEPT
        if session.kernel_body and not body:
            session.resumed = True
        session.kernel_body, session.kernel_replies = body, replies
        return ACCEPT_BODY if body else ACCEPT_REPLIES if replies else ACCEPT_RESUME

    @staticmethod
    def _ends(flow: Flow, seq: int, length: int) -> bool:
        """Does this FIN/RST end the flow?  While the flow is still inspected,
        only one at exactly the next expected sequence number does (the
        receiver ignores or challenges the others, RFC 5961), so a forged
        out-of-window RST or FIN cannot make the engine forget a connection
        the server keeps.  Finished flows may go on any FIN/RST."""
        if flow.done:
            return True
        stream = flow.stream
        if stream is None:
            return ((seq - flow.base) & 0xFFFFFFFF) == 0
        return stream.offset(seq) + length == stream.delivered

    def _flags(self, data: bytes, d: Fields, now: float, which: str) -> Decision:
        # never a ban: conntrack calls these packets invalid, no handshake ever proves their source
        verdict = Verdict(Action.DROP, Reason.TCP_FLAGS, rule=which)
        return self._decide(verdict, data, d, now)

    def _end_reverse(self, key: bytes, alen: int) -> None:
        # key of the reverse direction: swap addresses and ports
        rkey = key[alen:2 * alen] + key[:alen] + key[2 * alen + 2:] + key[2 * alen:2 * alen + 2]
        self.flows.flows.pop(rkey, None)

    # -- decisions --------------------------------------------------------------

    def _decide(self, verdict: Verdict, data: bytes, d: Fields | None, now: float) -> Decision:
        """Apply whitelist, alert mode and bans to a non-accept verdict; record it."""
        if d is None:  # malformed: name the addresses when the IP header is readable
            sport = dport = 0
            if len(data) >= 20 and data[0] >> 4 == 4:
                src_raw, dst_raw = data[12:16], data[16:20]
            elif len(data) >= 40 and data[0] >> 4 == 6:
                src_raw, dst_raw = data[8:24], data[24:40]
            else:
                src_raw = dst_raw = b""
        else:
            key, src_raw, sport, dport = d[:4]
            alen = len(src_raw)
            dst_raw = key[alen:2 * alen]
            if verdict.reason is not Reason.BANNED and self.whitelist and self.whitelist.contains_raw(src_raw):
                self.counts["whitelisted"] += 1
                return ACCEPT
        reason = verdict.reason.value if verdict.reason else "none"
        self.counts["verdict:" + reason] += 1
        ban_network = None
        if verdict.ban and src_raw:
            bkey = self.ban_key(src_raw)
            refusal = self._refuse_ban(bkey, dst_raw)
            if refusal is None:
                self.bans[bkey] = (now + verdict.ban, reason)
                ban_network = self.ban_network(bkey)
                self.counts["bans"] += 1
            else:
                self.counts["ban-refused:" + refusal] += 1
                verdict = Verdict(verdict.action, verdict.reason, verdict.rule, verdict.match, 0, verdict.alert,
                                  f"ban refused: {refusal}")
        if self._alert:
            self.counts["alerts"] += 1
        return Decision(verdict.action, verdict.reason, verdict.rule, verdict.match, verdict.ban, self._alert,
                        verdict.detail, False, now, format_addr(src_raw) if src_raw else "", sport,
                        format_addr(dst_raw) if dst_raw else "", dport, ban_network, d)

    def _refuse_ban(self, bkey: bytes, dst_raw: bytes) -> str | None:
        """Why the ban network ``bkey`` must not be banned, or ``None``.  Never this server:
        a network holding the packet's destination (its own address, its own /64), loopback,
        nor what the operator's ``protects`` names."""
        if dst_raw and len(dst_raw) == len(bkey) and mask_address(dst_raw, self._prefix[len(bkey)]) == bkey:
            return "own address" if len(bkey) == 4 or self._prefix[16] == 128 else f"own /{self._prefix[16]}"
        network = self.ban_network(bkey)
        if ipaddress.ip_network(network, strict=False).is_loopback:
            return "loopback"
        if self._protects is not None:
            return self._protects(network)
        return None

    def ban_network(self, bkey: bytes) -> str:
        """The ban network of a ban key (see :meth:`ban_key`), as text: ``203.0.113.7`` or ``2001:db8:1::/64``."""
        return network_text(bkey, self._prefix[len(bkey)])
