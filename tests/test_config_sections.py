"""Every config section is typed: [metrics] parsed into MetricsSettings, unknown sections and keys name file:line."""

import pytest

from inspector.config import ConfigError, MetricsSettings, load_config


def load(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(p)


def test_metrics_listen_is_typed(tmp_path):
    assert load(tmp_path, '[metrics]\nlisten = "127.0.0.1:9478"\n').metrics == MetricsSettings("127.0.0.1:9478")
    assert load(tmp_path, '[metrics]\nlisten = "[::1]:9478"\n').metrics.listen == "[::1]:9478"
    assert load(tmp_path, "mode = \"alert\"\n").metrics == MetricsSettings()


@pytest.mark.parametrize("text, line, message", [
    ('\n[metrics]\nlisen = "127.0.0.1:9478"\n', 3, "metrics.lisen: unknown setting"),
    ('[metrics]\nlisten = 9478\n', 2, "metrics.listen: expected a string"),
    ('[metrics]\n\nlisten = "9478"\n', 3, "metrics.listen: expected \"host:port\""),
    ('[metrics]\nlisten = "::1:9478"\n', 2, "metrics.listen: expected \"host:port\""),
    ('mode = "alert"\n[log]\nlevel = "debug"\n', 2, "log: unknown section"),
    ('[service]\nqueue = 1\nstate = "x"\n', 3, "service.state: unknown setting"),
])
def test_unknown_or_bad_keys_name_file_and_line(tmp_path, text, line, message):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'c.toml'}:{line}: ") and message in str(e.value)


def test_service_reply_mark_is_a_single_bit_apart_from_the_others(tmp_path):
    assert load(tmp_path, "mode = \"alert\"\n").service.reply_mark == 0x10000000
    assert load(tmp_path, "[service]\nreply_mark = 0\n").service.reply_mark == 0
    assert load(tmp_path, "[service]\nreply_mark = 0x8000000\n").service.reply_mark == 0x8000000
    for bad in ("reply_mark = 0x30000000", "reply_mark = 0x20000000", "reply_mark = 0x40000000", "reply_mark = -1",
                "body_mark = 0x10000000", 'reply_mark = "x"'):
        with pytest.raises(ConfigError, match="reply_mark"):
            load(tmp_path, f"[service]\n{bad}\n")
    assert load(tmp_path, "[service]\nbody_mark = 0x10000000\nreply_mark = 0x8000000\n").service.reply_mark == 0x8000000


def test_service_mark_bits_checked_together_defaults_included(tmp_path):
    """mark, body_mark and reply_mark are one check: a default that a given bit collides with is an error
    under the default's name (before, mark = 0x20000000 alone left body_mark on the same bit)."""
    with pytest.raises(ConfigError, match="body_mark"):
        load(tmp_path, "[service]\nmark = 0x20000000\n")
    with pytest.raises(ConfigError, match="reply_mark"):
        load(tmp_path, "[service]\nmark = 0x10000000\nbody_mark = 0\n")
    with pytest.raises(ConfigError, match="mark"):
        load(tmp_path, "[service]\nmark = 0\n")
    s = load(tmp_path, "[service]\nmark = 0x20000000\nbody_mark = 0x4000000\n").service
    assert (s.mark, s.body_mark, s.reply_mark) == (0x20000000, 0x4000000, 0x10000000)
    s = load(tmp_path, "[service]\nbody_mark = 0\nreply_mark = 0\n").service
    assert (s.mark, s.body_mark, s.reply_mark) == (0x40000000, 0, 0)
