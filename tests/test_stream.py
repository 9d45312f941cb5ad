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
