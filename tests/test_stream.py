from inspector.stream import Stream


def collect(stream, segments):
    return b"".join(stream.push(seq, data) for seq, data in segments)


def test_in_order():
    s = Stream(100, 4096)
    assert collect(s, [(100, b"abc"), (103, b"def")]) == b"abcdef"


def test_out_of_order_held_until_gap_fills():
    s = Stream(100, 4096)
    assert s.push(103, b"def") == b""
    assert s.push(106, b"ghi") == b""
    assert s.push(100, b"abc") == b"abcdefghi"
    assert s.pending is None


def test_retransmission_delivered_once():
    s = Stream(0, 4096)
    assert collect(s, [(0, b"abcd"), (0, b"abcd"), (2, b"cdef")]) == b"abcdef"
    assert s.conflicts == 0


def test_in_order_overlap_first_arrival_wins_and_is_counted():
    s = Stream(0, 4096)
    assert s.push(0, b"RCPT TO:<a@blo") == b"RCPT TO:<a@blo"
    assert s.push(0, b"RCPT TO:<a@xyzcked.test>") == b"cked.test>"
    assert s.conflicts == 1


def test_held_segment_inside_another_is_dropped_like_linux():
    s = Stream(0, 4096)
    s.push(4, b"efgh")
    s.push(5, b"XY")  # wholly inside the held one: dropped
    assert s.push(0, b"abcd") == b"abcdefgh"
    assert s.conflicts == 1


def test_new_segment_covering_held_ones_replaces_them_like_linux():
    s = Stream(0, 4096)
    s.push(5, b"XY")
    s.push(4, b"efgh")  # covers the held one: replaces it
    assert s.push(0, b"abcd") == b"abcdefgh"


def test_partial_overlap_lower_sequence_wins():
    s = Stream(0, 4096)
    s.push(6, b"ghij")
    s.push(4, b"efGH")
    assert s.push(0, b"abcd") == b"abcdefGHij"


def test_depth_limits_what_is_delivered_and_held():
    s = Stream(0, 8)
    assert s.push(0, b"abcdefghijkl") == b"abcdefgh"
    assert s.full
    assert s.push(8, b"more") == b""
    s2 = Stream(0, 8)
    assert s2.push(10, b"zz") == b""
    assert s2.pending is None


def test_sequence_wraparound():
    s = Stream(0xFFFFFFFE, 4096)
    assert s.push(0xFFFFFFFE, b"ab") == b"ab"
    assert s.push(0, b"cd") == b"cd"


def test_old_data_before_base_is_ignored():
    s = Stream(1000, 4096)
    assert s.push(990, b"0123456789") == b""
    assert s.push(995, b"56789ABCDE") == b"ABCDE"


# -- the Linux receiver's rules (tcp_data_queue_ofo, tcp_urg, tcp_paws_discard) ----------------


def test_adjacent_held_segments_coalesce_and_an_overlap_inside_them_is_dropped():
    s = Stream(0, 4096)
    s.push(4, b"exam")
    s.push(8, b"ple.")  # starts where the last held one ends: coalesced (tcp_ooo_try_coalesce)
    s.push(6, b"ZZZZ")  # inside the coalesced segment: dropped
    assert s.push(0, b"v@x.") == b"v@x.example."
    assert s.conflicts == 1 and s.ambiguous is None


def test_coalescing_onto_a_predecessor_that_then_covers_a_later_one_is_flagged_on_conflict():
    s = Stream(0, 4096)
    s.push(4, b"ab")
    s.push(8, b"ef")
    s.push(6, b"cdXY")  # adjacent to [4,6): coalesced into [4,10), which now covers [8,10) with other bytes
    assert s.ambiguous is None and s.conflicts == 1  # Linux delivers the coalesced bytes: predictable
    s.push(9, b"QQ")  # where this lands depends on Linux's rb-tree shape: not predictable
    assert s.ambiguous == "conflicting-copy-of-uncertain-bytes"
    t = Stream(0, 4096)
    t.push(4, b"ab")
    t.push(8, b"ef")
    t.push(6, b"cdXY")
    assert t.push(0, b"0123") == b"0123abcdXY"


def test_same_start_covering_replaces_and_merge_right_removes_covered():
    s = Stream(0, 4096)
    s.push(10, b"kl")
    s.push(4, b"ef")
    s.push(4, b"efghijklmn")  # same start, longer: replaces [4,6), and [10,12) is covered: removed
    assert s.pending == [[4, b"efghijklmn"]]
    assert s.push(0, b"abcd") == b"abcdefghijklmn"


def test_urgent_byte_is_removed_when_delivered_and_a_pointer_to_received_data_is_ignored():
    s = Stream(0, 4096)
    assert s.push(0, b"abcXdef", urgent=3) == b"abcdef"
    assert s.push(7, b"gh", urgent=2) == b"gh"  # points before rcv_nxt: ignored
    assert s.urgent_removed == 1


def test_urgent_pointer_into_held_data():
    s = Stream(0, 4096)
    s.push(4, b"Xefg", urgent=4)  # the byte arrives out of order: removed when it is delivered
    assert s.push(0, b"abcd") == b"abcdefg"


def test_newer_urgent_pointer_before_the_old_byte_arrived_returns_it_to_the_stream():
    s = Stream(0, 4096)
    s.push(0, b"ab", urgent=5)  # urgent byte at 5, not arrived
    s.push(2, b"cd", urgent=7)  # a newer pointer: the byte at 5 becomes ordinary data
    assert s.push(4, b"efgXi") == b"efgi"  # only the byte at 7 is taken out
    assert s.ambiguous is None


def test_paws_discards_stale_segments_and_keeps_fresh_ones():
    s = Stream(0, 4096)
    s.timestamps(1000)
    assert s.push(0, b"abc", tsval=10) == b""  # more than 1 behind ts_recent: discarded
    assert s.push(0, b"abc", tsval=999) == b"abc"  # 1 behind is still accepted
    assert s.paws_discarded == 1


def test_too_many_held_segments_is_ambiguous():
    s = Stream(0, 1 << 20)
    for i in range(300):
        s.push(10 + 2 * i, b"x")  # gaps between them: nothing coalesces
    assert s.ambiguous == "too-many-held-segments"
