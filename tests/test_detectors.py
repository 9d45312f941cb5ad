from inspector.detect.domains import DomainMatcher, normalize_domain
from inspector.detect.payload import PayloadMatcher
from inspector.detect.rate import RateLimiter
from inspector.flow import Flow, FlowTable


def test_rate_limiter_sliding_window():
    r = RateLimiter(limit=4, window=60, capacity=10)
    assert [r.hit(b"k", t) for t in (0, 10, 20, 30)] == [0, 0, 0, 0]
    assert r.hit(b"k", 40) == 5  # the fifth within 60 s
    r2 = RateLimiter(limit=4, window=60, capacity=10)
    assert [r2.hit(b"k", t) for t in (0, 20, 40, 60, 80, 100)] == [0] * 6  # never more than 4 in any window


def test_rate_limiter_capacity_bounds_memory():
    r = RateLimiter(limit=4, window=60, capacity=100)
    for i in range(10_000):
        r.hit(i.to_bytes(4, "big"), i * 0.001)
    assert len(r) == 100


def test_payload_matcher_across_chunks_case_insensitive():
    m = PayloadMatcher([b"EvilBot", b"\x00\x01\x02\x03"])
    hit, carry = m.scan("", b"xxEVI")
    assert hit is None
    hit, carry = m.scan(carry, b"lbOTyy")
    assert hit == "EvilBot"
    assert m.scan("", b"..\x00\x01\x02\x03..")[0] == "\x00\x01\x02\x03"
    assert PayloadMatcher([]).scan("", b"anything") == (None, "")


def test_domain_matcher_label_boundaries():
    m = DomainMatcher({"example.com": 0, "zip": 0})
    assert m.match("example.com") == "example.com"
    assert m.match("a.b.example.com") == "example.com"
    assert m.match("notexample.com") is None
    assert m.match("example.com.evil.test") is None
    assert m.match("file.zip") == "zip"
    assert DomainMatcher({}).match("example.com") is None


def test_normalize_domain():
    assert normalize_domain(" Example.COM. ") == "example.com"
    assert normalize_domain("[192.0.2.1]") is None
    assert normalize_domain("B\u00fcCHER.example") == "xn--bcher-kva.example"


def test_flow_table_lru_and_idle():
    t = FlowTable(max_flows=3, idle=10)
    for i in range(4):
        t.add(bytes([i]), Flow(i, i + 1, 1, now=float(i)))
    assert list(t.flows) == [b"\x01", b"\x02", b"\x03"] and t.evicted == 1
    t.sweep(12.5)  # flows last seen at 1 and 2 are more than 10 s old
    assert list(t.flows) == [b"\x03"] and t.expired == 2
