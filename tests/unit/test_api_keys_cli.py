"""``morgan keys`` on a keys file: add prints the key once, list shows no secret, revoke
by id prefix (the NATS bucket's round trip: tests/integration/test_gateway_keys.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.keys import key_hash
from morgan import cli


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["keys", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_keys_add_list_revoke_round_trip_on_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "keys.json")
    status, key, err = run(capsys, "add", "alice", "--name", "laptop", "--file", path)
    key = key.strip()
    assert status == 0 and key.startswith("mk_") and "shown only now" in err
    status, listed, _ = run(capsys, "list", "--file", path)
    header, row = listed.splitlines()
    assert header.split() == ["ID", "USER", "NAME", "CREATED", "REVOKED"]
    assert row.split()[:3] == [key_hash(key)[:12], "alice", "laptop"] and row.split()[-1] == "-"
    assert key not in listed

    status, said, _ = run(capsys, "revoke", key_hash(key)[:5], "--file", path)
    assert status == 0 and "revoked" in said
    (entry,) = json.loads(Path(path).read_text())["keys"]
    assert entry["revoked"] is not None
    status, again, _ = run(capsys, "revoke", key, "--file", path)  # by the key itself
    assert status == 0 and "already" in again


def test_keys_say_what_is_wrong_with_exit_status_1_or_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "keys.json")
    monkeypatch.delenv("MORGAN_API_KEYS_FILE", raising=False)
    status, _, err = run(capsys, "list")
    assert status == 2 and "set MORGAN_API_KEYS_FILE, or pass --file or --nats" in err
    status, _, err = run(capsys, "add", "not a user", "--file", path)
    assert status == 1 and "bad user id" in err
    status, _, err = run(capsys, "revoke", "abcdef", "--file", path)
    assert status == 1 and "no key with id" in err
    Path(path).write_text("[]")
    status, _, err = run(capsys, "add", "alice", "--file", path)
    assert status == 1 and "not a keys file" in err
