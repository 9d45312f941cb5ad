"""The SMTP-level differential cases (issue 12, kinds 2 to 5), as data.

Blocked domains: ``example.com``, ``straße.example`` (a U-label rule: ``xn--strae-oqa.example``),
``blocked.test`` (see ``harness.BLOCKED``).  The server's own address literals are
``[192.0.2.25]`` and ``[IPv6:2001:db8::25]``; cases that need one use ``{own}``, which
the harness cannot substitute per family, so they come in a v4 and a v6 variant.
"""

from __future__ import annotations

from .harness import Case, Seg

CRLF = b"\r\n"
CHUNK = b"Subject: t\r\n\r\nhello\r\n"
CHUNK_CMDS = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\n"
OWN = {4: "[192.0.2.25]", 6: "[IPv6:2001:db8::25]"}


def line(text: str | bytes, **kw: object) -> Seg:
    raw = text.encode() if isinstance(text, str) else text
    return Seg(raw + CRLF, **kw)  # type: ignore[arg-type]


def ehlo() -> Seg:
    return line("EHLO client.example.org")


def mail(sender: str = "<a@example.org>") -> Seg:
    return line(f"MAIL FROM:{sender}")


def rcpt(addr: str) -> Seg:
    return line(f"RCPT TO:{addr}")


def body(text: bytes = b"Subject: t\r\n\r\nhello\r\n", end: bytes = b".\r\n") -> Seg:
    return Seg(text + end)


def message(rcpts: list[str], text: bytes = b"Subject: t\r\n\r\nhello\r\n") -> list[Seg]:
    """MAIL, the RCPTs, DATA, a body and the end-of-data line, one segment each."""
    return [mail(), *(rcpt(r) for r in rcpts), line("DATA"), body(text)]


def clean() -> list[Case]:
    return [
        Case("baseline-allowed", [ehlo(), *message(["<v@example.org>"]), line("QUIT")], postfix_accepts=False,
             kind="0"),
        Case("baseline-blocked", [ehlo(), *message(["<v@example.com>"]), line("QUIT")], postfix_accepts=True,
             kind="0"),
    ]


def kind2() -> list[Case]:
    """SMTP state from commands the server refused (RFC 5321 order and syntax)."""
    return [
        # RCPT TO:<> (501), DATA refused (no valid recipient), then a real transaction
        Case("k2-null-rcpt-then-data", [ehlo(), mail(), rcpt("<>"), line("DATA"),
                                         rcpt("<v@example.com>"), line("DATA"), body(), line("QUIT")],
             postfix_accepts=True, kind="2"),
        # RCPT before MAIL (503), DATA (503), then a full transaction: no relay permission needed for this
        Case("k2-rcpt-before-mail", [ehlo(), rcpt("<x@example.org>"), line("DATA"),
                                     *message(["<v@example.com>"]), line("QUIT")],
             postfix_accepts=True, kind="2"),
        # variant: everything in one segment (pipelined)
        Case("k2-rcpt-before-mail-one-segment",
             [Seg(b"EHLO c\r\nRCPT TO:<x@example.org>\r\nDATA\r\nMAIL FROM:<a@example.org>\r\n"
                  b"RCPT TO:<v@example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")],
             postfix_accepts=True, kind="2"),
        # the false positive: a nested MAIL (503) does not reset the transaction; the body is body
        Case("k2-nested-mail-body-line", [ehlo(), mail(), rcpt("<v@example.org>"), mail("<b@example.org>"),
                                          line("DATA"), body(b"Subject: t\r\n\r\nRCPT TO:<v@example.com>\r\n"),
                                          line("QUIT")],
             postfix_accepts=False, kind="2"),
        # DATA with an argument is a syntax error (501): what follows is commands
        Case("k2-data-with-argument", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA x"),
                                       rcpt("<v@example.com>"), line("DATA"), body(), line("QUIT")],
             postfix_accepts=True, kind="2"),
        # a MAIL with a broken path (501) opens no transaction
        Case("k2-bad-mail-syntax", [ehlo(), line("MAIL FROM:<a@example.org"), rcpt("<x@example.org>"),
                                    line("DATA"), *message(["<v@example.com>"])],
             postfix_accepts=True, kind="2"),
        # RSET ends the transaction: a DATA after it is refused and the next lines are commands
        Case("k2-rset-then-data", [ehlo(), mail(), rcpt("<x@example.org>"), line("RSET"), line("DATA"),
                                   *message(["<v@example.com>"])],
             postfix_accepts=True, kind="2"),
        # a refused blocked recipient (RCPT before MAIL) is not accepted, and not blocked
        Case("k2-refused-blocked-rcpt", [ehlo(), rcpt("<v@example.com>"), line("DATA"),
                                         *message(["<v@example.org>"]), line("QUIT")],
             postfix_accepts=False, kind="2"),
        # EHLO in a transaction resets it: the DATA after it is refused, the next lines are commands
        Case("k2-ehlo-resets", [ehlo(), mail(), rcpt("<v@example.org>"), ehlo(), line("DATA"),
                                *message(["<v@example.com>"])],
             postfix_accepts=True, kind="2"),
        # a refused BDAT (no transaction) still swallows its chunk; what follows is commands
        Case("k2-refused-bdat-chunk", [ehlo(), line("BDAT 6"), Seg(b"QUIT\r\n"), line("RSET"),
                                       *message(["<v@example.com>"])],
             postfix_accepts=True, kind="2"),
        # the body of an accepted DATA is body, whatever it says
        Case("k2-body-says-rcpt", [ehlo(), *message(["<v@example.org>"],
                                                    b"Subject: t\r\n\r\nMAIL FROM:<x@example.org>\r\n"
                                                    b"RCPT TO:<v@example.com>\r\n"), line("QUIT")],
             postfix_accepts=False, kind="2"),
    ]


def policy() -> list[Case]:
    """Kind 2, recipients refused for policy (invisible on the client side): only the server's replies
    (its 554 to DATA, its 354) tell whether a body follows.  ``unknown-user.local`` is a local domain
    without users (550 5.1.1), ``denied.test`` is refused by an access map (554 5.7.1)."""
    unknown, denied = "<v@unknown-user.local>", "<v@denied.test>"
    return [
        Case("k2-policy-unknown-user-then-blocked",
             [ehlo(), mail(), rcpt(unknown), line("DATA"), rcpt("<v@example.com>"), line("DATA"), body(),
              line("QUIT")], postfix_accepts=True, kind="2", replies_only=True),
        Case("k2-policy-access-denied-then-blocked",
             [ehlo(), mail(), rcpt(denied), line("DATA"), rcpt("<v@example.com>"), line("DATA"), body(),
              line("QUIT")], postfix_accepts=True, kind="2", replies_only=True),
        # the whole attack in one segment (pipelined past DATA: the body is read as commands)
        Case("k2-policy-pipelined-one-segment",
             [ehlo(), Seg(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\nDATA\r\n"
                          b"RCPT TO:<v@example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")],
             postfix_accepts=True, kind="2", replies_only=True),
        # the refused RCPT's reply echoes "354 End data ..." at byte 128; the client's window (1, scaled by
        # 128; advertised on a segment with a newer sequence number, so Linux takes the shrink) makes the
        # server cut it there: its next segment starts with "354 " while the DATA is pending.  Only an
        # LF the server sent proves a line start: the engine must not take that for the DATA's 354.
        Case("k2-policy-window-cut-echo-354",
             [ehlo(), mail(), Seg(b"R"),
              Seg(b'CPT TO:<"' + b"x" * 117 + b'354 End data with <CR><LF>.<CR><LF>"@unknown-user.local>\r\n'
                  b"DATA\r\n", window=1),
              rcpt("<v@example.com>"), line("DATA"), body(), line("QUIT")],
             postfix_accepts=True, kind="2", replies_only=True,
             note="Postfix echoes the address unquoted: '550 5.1.1 <' + 117 x = 128 bytes before '354'"),
        # legitimate: a refused DATA, then a real message whose body quotes a blocked envelope command
        Case("k2-policy-refused-then-real-body",
             [ehlo(), mail(), rcpt(unknown), line("DATA"), line("RSET"), *message(
                 ["<v@example.org>"], b"Subject: t\r\n\r\nRCPT TO:<v@example.com>\r\n"), line("QUIT")],
             postfix_accepts=False, kind="2"),
        # legitimate: one refused recipient among accepted ones; the body is body
        Case("k2-policy-one-refused-rest-accepted",
             [ehlo(), mail(), rcpt(unknown), rcpt("<v@example.org>"), line("DATA"),
              body(b"Subject: t\r\n\r\nMAIL FROM:<x@example.com>\r\n"), line("QUIT")],
             postfix_accepts=False, kind="2"),
    ]


def kind3(family: int) -> list[Case]:
    """Postfix's default address rewriting: percent hack and bang paths."""
    own = OWN[family]
    f = (family,)
    return [
        Case(f"k3-percent-own-literal-v{family}", [ehlo(), *message([f"<v%example.com@{own}>"])],
             postfix_accepts=True, kind="3", families=f),
        Case(f"k3-bang-own-literal-v{family}", [ehlo(), *message([f"<example.com!v@{own}>"])],
             postfix_accepts=True, kind="3", families=f),
        Case(f"k3-bang-bare-v{family}", [ehlo(), *message(["<example.com!v>"])],
             postfix_accepts=True, kind="3", families=f),
        Case(f"k3-percent-bare-v{family}", [ehlo(), *message(["<v%example.com>"])],
             postfix_accepts=True, kind="3", families=f),
        Case(f"k3-nested-bang-v{family}", [ehlo(), *message(["<example.org!example.com!v>"])],
             postfix_accepts=False, kind="3", families=f),
        Case(f"k3-percent-two-v{family}", [ehlo(), *message([f"<v%example.com%example.org@{own}>"])],
             postfix_accepts=False, kind="3", families=f),
        Case(f"k3-quoted-local-own-literal-v{family}", [ehlo(), *message([f'<"v@example.com"@{own}>'])],
             postfix_accepts=None, kind="3", families=f),
        Case(f"k3-quoted-local-remote-v{family}", [ehlo(), *message(['<"v@example.com"@example.org>'])],
             postfix_accepts=False, kind="3", families=f),
        Case(f"k3-upper-percent-v{family}", [ehlo(), *message([f"<V%EXAMPLE.COM@{own}>"])],
             postfix_accepts=True, kind="3", families=f),
    ]


def kind4() -> list[Case]:
    """Internationalised domains: IDNA 2008 / UTS #46, as Postfix looks them up."""
    return [
        Case("k4-sharp-s-utf8", [ehlo(), line("MAIL FROM:<a@example.org> SMTPUTF8"),
                                 rcpt("<v@straße.example>"), line("DATA"), body()],
             postfix_accepts=True, kind="4"),
        Case("k4-fass-is-not-strasse", [ehlo(), line("MAIL FROM:<a@example.org> SMTPUTF8"),
                                        rcpt("<v@strasse.example>"), line("DATA"), body()],
             postfix_accepts=False, kind="4"),
        Case("k4-a-label", [ehlo(), *message(["<v@xn--strae-oqa.example>"])], postfix_accepts=True, kind="4"),
        Case("k4-uppercase-utf8", [ehlo(), line("MAIL FROM:<a@example.org> SMTPUTF8"),
                                   rcpt("<v@STRAßE.example>"), line("DATA"), body()],
             postfix_accepts=True, kind="4"),
    ]


def kind5() -> list[Case]:
    """Every transaction of a session: after the end-of-data line, commands again."""
    second = [mail(), rcpt("<v@example.com>"), line("DATA"), body()]
    return [
        Case("k5-second-transaction", [ehlo(), *message(["<v@example.org>"]), *second, line("QUIT")],
             postfix_accepts=True, kind="5"),
        Case("k5-lf-dot-lf", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                              Seg(b"Subject: t\r\n\r\nhi\n.\n"), *second],
             postfix_accepts=True, kind="5"),
        Case("k5-lf-dot-crlf", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                Seg(b"Subject: t\r\n\r\nhi\n.\r\n"), *second],
             postfix_accepts=True, kind="5"),
        Case("k5-dot-cr-cr-lf", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                 Seg(b"Subject: t\r\n\r\nhi\r\n.\r\r\n"), *second],
             postfix_accepts=True, kind="5"),
        Case("k5-cr-dot-cr-not-end", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                      Seg(b"Subject: t\r\n\r\nhi\r.\r"), *second],
             postfix_accepts=False, kind="5"),
        # the dot line split over segments: "\r\n" | ".\r\n" | commands
        Case("k5-dot-own-segment", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                    Seg(b"Subject: t\r\n\r\nhi\r\n"), Seg(b".\r\n"), *second],
             postfix_accepts=True, kind="5"),
        Case("k5-dot-then-commands-one-segment", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                                  Seg(b"Subject: t\r\n\r\nhi\r\n"),
                                                  Seg(b".\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>"
                                                      b"\r\nDATA\r\n"), body()],
             postfix_accepts=True, kind="5"),
        Case("k5-split-dot-cr-lf", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                    Seg(b"Subject: t\r\n\r\nhi\r\n."), Seg(b"\r"), Seg(b"\n"), *second],
             postfix_accepts=True, kind="5"),
        # dot-stuffing: "..x" is a body line, not the end
        Case("k5-dot-stuffed-not-end", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                        Seg(b"Subject: t\r\n\r\n..\r\nMAIL FROM:<a@example.org>\r\n"
                                            b"RCPT TO:<v@example.com>\r\n"), body()],
             postfix_accepts=False, kind="5"),
        # BDAT: a chunk in its own segment, then a second transaction
        Case("k5-bdat-then-second", [ehlo(), mail(), rcpt("<v@example.org>"), line(f"BDAT {len(CHUNK)} LAST"),
                                     Seg(CHUNK), *second],
             postfix_accepts=True, kind="5"),
        Case("k5-bdat-chunk-holds-commands", [ehlo(), mail(), rcpt("<v@example.org>"),
                                              line(f"BDAT {len(CHUNK_CMDS)} LAST"), Seg(CHUNK_CMDS)],
             postfix_accepts=False, kind="5"),
    ]


def splits() -> list[Case]:
    """Variants of the kinds at other split points."""
    return [
        # kind 2: the refused RCPT, DATA and the real RCPT split mid-word, mid-address
        Case("k2-null-rcpt-split", [ehlo(), mail(), Seg(b"RCPT TO:<"), Seg(b">\r\nDA"), Seg(b"TA\r\nRCPT TO:<v@exa"),
                                    Seg(b"mple.com>\r\nDATA\r\n"), body()],
             postfix_accepts=True, kind="2"),
        # kind 5: the end-of-data line split after its CR, the next MAIL in the same segment as its LF
        Case("k5-dot-cr-then-lf-mail", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                        Seg(b"Subject: t\r\n\r\nhi\r\n.\r"),
                                        Seg(b"\nMAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\n"),
                                        line("DATA"), body()],
             postfix_accepts=True, kind="5"),
        # kind 5: a BDAT chunk that ends mid-segment, the next transaction right behind it
        Case("k5-bdat-chunk-then-mail-same-segment",
             [ehlo(), mail(), rcpt("<v@example.org>"), line(f"BDAT {len(CHUNK)} LAST"),
              Seg(CHUNK + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"), body()],
             postfix_accepts=True, kind="5"),
        # kind 5: "\n." split between segments inside a body line ("x\n" | ".y"): not an end
        Case("k5-lf-then-dot-text", [ehlo(), mail(), rcpt("<v@example.org>"), line("DATA"),
                                     Seg(b"Subject: t\r\n\r\nx\r\n"), Seg(b".y\r\nMAIL FROM:<a@example.org>\r\n"
                                                                          b"RCPT TO:<v@example.com>\r\n"), body()],
             postfix_accepts=False, kind="5"),
        # kind 4: the U-label recipient split inside the two-byte UTF-8 sequence of "ß"
        Case("k4-sharp-s-split-utf8", [ehlo(), line("MAIL FROM:<a@example.org> SMTPUTF8"),
                                       Seg(b"RCPT TO:<v@stra" + b"\xc3"), Seg(b"\x9f" + b"e.example>\r\n"),
                                       line("DATA"), body()],
             postfix_accepts=True, kind="4"),
    ]


def separators() -> list[Case]:
    """Kind 2, Postfix's tokenizer (``smtpd_token.c``): a command's words are split at ISSPACE (SP, HT, VT,
    FF, CR) and leading ISSPACE is skipped; a NUL ends the line's tokens.  ``DATA<VT>`` is a DATA: its 354
    leaves on its own when the client holds back the rest of a line ("." here), after the engine read a
    second DATA; a 354 taken for that second DATA's opens a body the server never opened."""
    return [
        Case("k2-sep-vt-rcpt", [ehlo(), mail(), line(b"RCPT\x0bTO:<v@example.com>"), line("DATA"), body(),
                                line("QUIT")], postfix_accepts=True, kind="2"),
        Case("k2-sep-cr-rcpt", [ehlo(), mail(), line(b"RCPT\rTO:<v@example.com>"), line("DATA"), body(),
                                line("QUIT")], postfix_accepts=True, kind="2"),
        Case("k2-sep-ff-lead-rcpt", [ehlo(), mail(), line(b"\x0cRCPT TO:<v@example.com>"), line("DATA"), body(),
                                     line("QUIT")], postfix_accepts=True, kind="2"),
        Case("k2-sep-nul-data-is-data", [ehlo(), mail(), rcpt("<v@example.org>"), line(b"DATA\x00x"),
                                         Seg(b"RCPT TO:<v@example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n"),
                                         line("QUIT")], postfix_accepts=False, kind="2"),
        Case("k2-sep-vt-data-lends-its-354",
             [ehlo(), Seg(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\x0b\r\n.", wait=0.0),
              Seg(b"\r\nDATA\r\n"), Seg(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"),
              body(), line("QUIT")], postfix_accepts=True, kind="2"),
        # "BDAT 4<VT>LAST" is a BDAT to Postfix (the transaction ends); the engine's model keeps it open, so
        # without the replies the next DATA (503 need RCPT) starts a body there
        Case("k2-sep-vt-bdat-then-data",
             [ehlo(), mail(), rcpt("<v@example.org>"), Seg(b"BDAT 4\x0bLAST\r\nxx\r\n"), line("DATA"),
              Seg(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"), body(), line("QUIT")],
             postfix_accepts=True, kind="2"),
    ]


def all_cases() -> list[Case]:
    from .tcp_cases import tcp_cases  # the tcp helper's cases (issue 12 kinds 1 and 6)

    return [*clean(), *kind2(), *policy(), *kind3(4), *kind3(6), *kind4(), *kind5(), *splits(), *separators(),
            *tcp_cases()]
