"""The inspection engine: packet bytes and a timestamp in, a verdict out.

Pure and deterministic: no I/O, no clock (time comes with each packet), no
global state.  The NFQUEUE service, ``inspector replay`` and the tests all
drive this same object.

Per packet: decode → ban check → TCP flag sanity → flow lookup → on a SYN,
the connection-rate limit → client stream reassembly → the flow's detector
(SMTP envelope or payload strings).  Server→client packets, where a capture
has them, only end flows; nothing depends on them.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from .config import Config, RateRule
from .detect.rate import RateLimiter
from .detect.smtp import BODY, CHUNK, COMMAND, SmtpSession
from .flow import KIND_PAYLOAD, KIND_SMTP, Flow, FlowTable
from .nets import Whitelist, mask_address, network_text
from .packet import ACK, FIN, PSH, RST, SYN, URG, Malformed, decode, format_addr
from .rules import RuleSet
from .stream import Stream
from .verdict import ACCEPT, ACCEPT_BODY, ACCEPT_RESUME, BYPASS, Action, Decision, Fields, Reason, Verdict

__all__ = ["Engine", "Decision"]

_XMAS = FIN | PSH | URG
# an end-of-data line, or the start of one, anywhere in a segment (see Engine._body_gap)
_MAY_END_DATA = re.compile(rb"(?:^|\n)\.\r*(?:\n|$)")


class Engine:
    """Stateful per-packet inspection; see the module docstring."""

    def __init__(self, config: Config, rules: RuleSet) -> None:
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
                if sport in self._kind:  # server -> client: only used to end flows
                    if flags & (RST | FIN):
                        self._end_reverse(key, len(src))
                    self.counts["server"] += 1
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
            if f & SYN:
                if f & (FIN | RST):
                    return self._flags(data, d, now, "SYN+FIN" if f & FIN else "SYN+RST")
                if f & ACK:  # a SYN-ACK towards a protected port is not a new connection
                    return ACCEPT
                return self._syn(key, src, dport, seq, kind, data, d, poff, pend, now)
            if f == 0:
                return self._flags(data, d, now, "NULL")
            if f & _XMAS == _XMAS:
                return self._flags(data, d, now, "XMAS")

            table = self.flows
            flows = table.flows
            flow = flows.get(key)
            if flow is None:
                if pend == poff:
                    return ACCEPT  # a bare ACK/FIN/RST of a flow we do not know: nothing to inspect
                flow = Flow(None, seq, kind, now)
                table.add(key, flow)
                self.counts["flows"] += 1
                self.counts["flows-midstream"] += 1
            else:
                flow.last = now
                flows.move_to_end(key)
            if now >= table.next_sweep:
                table.sweep(now)

            decision = ACCEPT
            if pend > poff:
                if not flow.done:
                    decision = self._inspect(flow, seq, data[poff:pend], data, d, dport, now)
                if decision is ACCEPT and flow.done and not flow.blocked:
                    decision = BYPASS
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
        """Counters for ``status``: packets, flows (active, evicted, expired), malformed packets, bans, rate-limit
        sources, and every named count.
        """
        return {
            "packets": self.packets,
            "flows": self.counts["flows"],
            "flows_active": len(self.flows),
            "flows_evicted": self.flows.evicted,
            "flows_expired": self.flows.expired,
            "malformed": self.counts["malformed"],
            "bans_active": len(self.bans),
            "rate_sources": sum(len(lim) for lim, _ in {id(v[0]): v for v in self._limiters.values()}.values()),
            "counts": dict(sorted(self.counts.items())),
        }

    # -- the data path --------------------------------------------------------

    def _syn(self, key: bytes, src: bytes, dport: int, seq: int, kind: int, data: bytes,
             d: Fields, poff: int, pend: int, now: float) -> Decision:
        table = self.flows
        flow = table.flows.get(key)
        if flow is not None and flow.isn == seq:
            flow.last = now  # a retransmitted SYN is not a new connection
            return ACCEPT
        limiter = self._limiters.get(dport)
        if limiter is not None:
            lim, rule = limiter
            rkey = (src if self._raw_key[len(src)] else self.ban_key(src)) + dport.to_bytes(2, "big")
            count = lim.hit(rkey, now)
            if count:
                verdict = Verdict(Action.DROP, Reason.RATE, rule=f"{rule.limit}/{rule.window:g}s",
                                  match=f"{count} new connections in {rule.window:g}s", ban=rule.ban)
                decision = self._decide(verdict, data, d, now)
                if decision is not ACCEPT:
                    return decision
        flow = Flow(seq, (seq + 1) & 0xFFFFFFFF, kind, now)
        table.add(key, flow)
        if now >= table.next_sweep:
            table.sweep(now)
        self.counts["flows"] += 1
        if pend > poff:  # data on the SYN (TCP Fast Open)
            return self._inspect(flow, (seq + 1) & 0xFFFFFFFF, data[poff:pend], data, d, dport, now)
        return ACCEPT

    def _inspect(self, flow: Flow, seq: int, payload: bytes, data: bytes, d: Fields, dport: int,
                 now: float) -> Decision:
        stream = flow.stream
        if stream is None:
            stream = flow.stream = Stream(flow.base, self._depth)
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
        chunk = stream.push(seq, payload)
        if stream.conflicts != conflicts:
            self.counts["overlap-conflicts"] += 1
        if not chunk:
            if stream.full:
                flow.done = True
            return ACCEPT
        rules = self.rules
        if flow.kind == KIND_SMTP:
            session = flow.state
            if not isinstance(session, SmtpSession):
                session = flow.state = SmtpSession(self._smtp, midstream=flow.isn is None)
            hit = session.feed(chunk, rules.domains)
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
        if stream.full or (self._bypass_early and flow.kind != KIND_SMTP and b"\n" in chunk):
            flow.done = True  # early: the first line (an SSH banner) was seen
        if self._bypass_early and not flow.done:
            state = flow.state
            if state.__class__ is SmtpSession and (state.mode == BODY and not state.partial) != state.kernel_body:
                return self._body_mark(state)
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
            if off > stream.delivered:
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
        elif mode == COMMAND and off > stream.delivered:
            return Verdict(Action.DROP, Reason.DESYNC, detail="a gap after a body: resent once the gap is filled")
        return None

    @staticmethod
    def _body_mark(session: SmtpSession) -> Decision:
        """The accept that keeps the connection's in-body mark in step with the session
        (:data:`ACCEPT_BODY` on entering a body, :data:`ACCEPT_RESUME` on leaving it)."""
        want = session.in_body
        if want == session.kernel_body:
            return ACCEPT
        session.kernel_body = want
        if not want:
            session.resumed = True
        return ACCEPT_BODY if want else ACCEPT_RESUME

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
        verdict = Verdict(Action.DROP, Reason.TCP_FLAGS, rule=which, ban=self.config.ban_flags)
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
            self.bans[bkey] = (now + verdict.ban, reason)
            ban_network = self.ban_network(bkey)
            self.counts["bans"] += 1
        if self._alert:
            self.counts["alerts"] += 1
        return Decision(verdict.action, verdict.reason, verdict.rule, verdict.match, verdict.ban, self._alert,
                        verdict.detail, False, now, format_addr(src_raw) if src_raw else "", sport,
                        format_addr(dst_raw) if dst_raw else "", dport, ban_network, d)

    def ban_network(self, bkey: bytes) -> str:
        """The ban network of a ban key (see :meth:`ban_key`), as text: ``203.0.113.7`` or ``2001:db8:1::/64``."""
        return network_text(bkey, self._prefix[len(bkey)])
