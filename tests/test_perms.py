"""[files]: one permission policy, parsed at the boundary (issue 11, item 10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inspector.config import ConfigError, load_config
from inspector.perms import FilePolicy


def _config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_default_is_root_only(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "")).files == FilePolicy(0o600, None)


def test_0640_with_a_group(tmp_path: Path) -> None:
    files = load_config(_config(tmp_path, '[files]\nmode = "0640"\ngroup = "adm"\n')).files
    assert files.mode == 0o640 and files.group == "adm" and files.socket_mode == 0o660


@pytest.mark.parametrize(("text", "message"), [
    ('[files]\nmode = "0644"\n', ':2: files.mode: must be "0600" or "0640"'),
    ('[files]\nmode = "0640"\n', "files.group: mode \"0640\" needs a group"),
    ('[files]\nmode = "0640"\ngroup = "no-such-group-here"\n', ":3: files.group: no group"),
    ('[files]\nowner = "x"\n', ":2: files.owner: unknown setting"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace('"', '.').replace("(", ".")):
        load_config(_config(tmp_path, text))


def test_open_append_creates_private_and_tightens_an_old_file(tmp_path: Path) -> None:
    old = tmp_path / "events.jsonl"
    old.write_text("x\n")
    old.chmod(0o644)  # as an older version left it
    fd = FilePolicy().open_append(old)
    os.close(fd)
    assert old.stat().st_mode & 0o777 == 0o600
    fd = FilePolicy().open_append(tmp_path / "new.jsonl")
    os.close(fd)
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o600
