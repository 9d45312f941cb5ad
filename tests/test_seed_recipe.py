"""The seeds' ``iptables -m string "@example.com"`` recipe against the engine, case by case.

Each case says what *should* happen (blocked or not), checks the engine gets it
right, and records whether the per-packet, case-sensitive recipe agrees.  The
cases where it does not are the reason this product exists.
"""

import pytest

from benchmarks.string_recipe import StringRecipe
from tests.conftest import Conn

RULE = "example.com"


def session(*segments: bytes, src: str = "198.51.100.7") -> list[bytes]:
    c = Conn(src=src)
    return [c.syn(), c.send(b"EHLO client.test\r\nMAIL FROM:<a@ok.test>\r\n"), *[c.send(s) for s in segments]]


def out_of_order() -> list[bytes]:
    c = Conn()
    a, b = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<x@exam", b"ple.com>\r\n"
    return [c.syn(), c.at(len(a), b), c.at(0, a)]


CASES = {
    # name: (packets, should block, does the seed recipe get it right?)
    "plain": (session(b"RCPT TO:<x@example.com>\r\n"), True, True),
    "upper case": (session(b"RCPT TO:<x@EXAMPLE.COM>\r\n"), True, False),
    "split over two segments": (session(b"RCPT TO:<x@exam", b"ple.com>\r\n"), True, False),
    "one byte per segment": (session(*[bytes([b]) for b in b"RCPT TO:<x@example.com>\r\n"]), True, False),
    "out of order": (out_of_order(), True, False),
    "subdomain": (session(b"RCPT TO:<x@mx.example.com>\r\n"), True, False),
    "look-alike suffix": (session(b"RCPT TO:<x@example.com.evil.test>\r\n"), False, False),
    "mentioned in the body": (session(b"RCPT TO:<x@ok.test>\r\nDATA\r\n",
                                      b"From: someone@example.com\r\n\r\nhi\r\n.\r\n"), False, False),
    "clean": (session(b"RCPT TO:<x@ok.test>\r\n"), False, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_engine_right_recipe_compared(name, make_engine):
    packets, should_block, recipe_right = CASES[name]
    engine = make_engine(domains=RULE + "\n")
    engine_blocks = any(engine.process(p, i * 0.01).reason is not None for i, p in enumerate(packets))
    recipe_blocks = StringRecipe([RULE]).matches(packets) > 0
    assert engine_blocks == should_block, "the engine must get every case right"
    assert (recipe_blocks == should_block) == recipe_right, "the recipe's known behaviour changed"
