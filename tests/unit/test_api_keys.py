"""API keys stored hashed (gateway/keys.py), the gateway's key ring (gateway/key_ring.py),
the per-key rate (gateway/quota.py) and how a key is presented (gateway/auth.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from starlette.requests import HTTPConnection

from gateway import auth
from gateway.key_ring import KeyRefused, KeyRing, client_of_key
from gateway.keys import KeyEntry, KeyFile, KeysError, find, key_hash, new_key
from gateway.quota import Quota, RateLimited
from streams.settings import Settings


def conn(
    kind: str = "http",
    headers: dict[str, str] | None = None,
    query: str = "",
    subprotocols: list[str] | None = None,
) -> HTTPConnection:
    scope = {
        "type": kind,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": query.encode(),
        "client": ("10.0.0.7", 5000),
        "subprotocols": subprotocols or [],
    }
    return HTTPConnection(scope)


def test_a_new_key_has_256_random_bits_and_is_stored_as_a_prefixed_sha256() -> None:
    key = new_key()
    assert key.startswith("mk_") and len(key) == 46 and new_key() != key
    digest = key_hash(key)
    assert len(digest) == 64 and key not in digest
    assert digest != key_hash(key + "x")
    assert digest != hashlib.sha256(key.encode()).hexdigest()  # a domain prefix is hashed too


def test_the_keys_file_keeps_hashes_only_and_is_private_to_its_owner(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "sub" / "keys.json")
    key = new_key()
    with store.locked() as entries:
        entries.append(KeyEntry.make(key, "alice", "laptop"))
    text = store.path.read_text()
    assert key not in text and key[3:] not in text
    assert store.path.stat().st_mode & 0o777 == 0o600
    (entry,) = store.read()[0]
    assert (entry.sha256, entry.user, entry.name, entry.revoked) == (
        key_hash(key),
        "alice",
        "laptop",
        None,
    )
    assert entry.created.endswith("Z")


def test_a_broken_keys_file_is_an_error_and_a_bad_entry_is_skipped_with_its_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    store = KeyFile(path)
    assert store.read() == ([], [])  # missing: no keys
    path.write_text("{not json")
    with pytest.raises(KeysError, match="not JSON"):
        store.read()
    good = KeyEntry.make(new_key(), "bob").to_json()
    bad = {**good, "sha256": "xyz"}
    path.write_text(json.dumps({"format": "morgan-api-keys/1", "keys": [good, bad, 3]}))
    entries, skipped = store.read()
    assert [e.user for e in entries] == ["bob"] and len(skipped) == 2
    with pytest.raises(KeysError), store.locked():  # writing back would drop the bad ones
        pass


def test_a_key_is_found_by_itself_its_id_or_a_unique_prefix_and_never_by_a_short_one() -> None:
    keys = [new_key() for _ in range(3)]
    entries = [KeyEntry.make(k, "alice") for k in keys]
    assert find(entries, keys[1]) == entries[1]
    assert find(entries, entries[2].id) == entries[2]
    assert find(entries, entries[0].sha256[:10].upper()) == entries[0]
    for short in ("abc", "", "not-hex!"):
        with pytest.raises(KeysError, match="not a key id"):
            find(entries, short)
    with pytest.raises(KeysError, match="no key"):
        find(entries, "0000000000")
    twins = [KeyEntry("ab12" + "0" * 60, "a"), KeyEntry("ab12" + "1" * 60, "b")]
    with pytest.raises(KeysError, match="names 2 keys"):
        find(twins, "ab12")


def test_a_user_id_must_be_plain() -> None:
    for user in ("", "has space", "-dash-first", "a:b", "x" * 65):
        with pytest.raises(KeysError, match="bad user id"):
            KeyEntry.make(new_key(), user)


def test_a_key_revoked_in_any_source_is_revoked_and_an_unknown_key_is_unauthorized() -> None:
    ring = KeyRing(Settings(api_keys="alice:dev-key"))
    ring.set_file([KeyEntry.make("dev-key", "alice").revoke()])
    with pytest.raises(KeyRefused) as info:
        ring.user_of(key_hash("dev-key"))
    assert info.value.code == "key_revoked"
    with pytest.raises(KeyRefused) as info:
        ring.caller("unknown", "10.0.0.7")
    assert info.value.code == "unauthorized"
    fresh = KeyEntry.make("other", "bob")
    ring.set_bucket({fresh.sha256: fresh})
    assert ring.caller("other", "10.0.0.7").user == "bob"
    ring.set_bucket({})
    assert not ring.valid(fresh.sha256)


def test_a_configured_keys_file_turns_auth_on_even_while_it_holds_no_key() -> None:
    assert not KeyRing(Settings()).enabled
    ring = KeyRing(Settings(api_keys_file="/nonexistent/keys.json"))
    assert ring.enabled
    with pytest.raises(KeyRefused):
        ring.caller(None, "10.0.0.7")


def test_a_key_has_its_rate_per_minute_and_is_told_when_a_token_is_back() -> None:
    quota = Quota(Settings(key_rate_per_min=3))
    client = client_of_key(key_hash("k"))
    for _ in range(3):
        quota.take(client)
    with pytest.raises(RateLimited) as info:
        quota.take(client)
    assert info.value.code == "rate_limited" and 1 <= info.value.retry_after_s <= 20
    assert info.value.to_client()["retry_after"] == info.value.retry_after_s
    quota.take(client_of_key(key_hash("another")))  # a key's own bucket
    for _ in range(100):
        quota.take("addr:10.0.0.7")  # no key, no rate


def test_a_key_in_a_url_is_refused_with_how_to_send_it() -> None:
    ring = KeyRing(Settings(api_keys="k1"))
    with pytest.raises(auth.Refused) as info:
        auth.identify(conn(query="api_key=k1", headers={"Authorization": "Bearer k1"}), ring)
    assert (info.value.status, info.value.code) == (400, "key_in_url")
    assert "Authorization: Bearer" in info.value.message


def test_a_websocket_key_comes_as_a_subprotocol_and_only_morgan_v1_is_answered() -> None:
    ring = KeyRing(Settings(api_keys="bob:k1"))
    ws = conn("websocket", subprotocols=["morgan.v1", "morgan.key.k1"])
    assert auth.identify(ws, ring).user == "bob"
    assert auth.subprotocol(ws) == "morgan.v1"
    assert auth.subprotocol(conn("websocket", subprotocols=["morgan.key.k1"])) is None
    with pytest.raises(auth.Refused) as info:
        auth.identify(conn("websocket", subprotocols=["morgan.v1", "morgan.key.k2"]), ring)
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}
