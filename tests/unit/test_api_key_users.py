"""API keys act for users (``MORGAN_API_KEYS`` entries ``user:key`` or ``key``)."""

from __future__ import annotations

from starlette.requests import Request

from gateway import auth
from gateway.key_ring import KeyRing
from streams.settings import Settings


def request(key: str | None = None, host: str = "10.0.0.7") -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "headers": headers, "query_string": b"", "client": (host, 5000)}
    return Request(scope)


def test_keys_with_a_user_act_for_it_and_keys_without_one_are_their_own_user() -> None:
    s = Settings(api_keys="alice:k-one, alice:k-two,bob:k-three ,lone-key")
    assert s.api_key_users == {"k-one": "alice", "k-two": "alice", "k-three": "bob", "lone-key": ""}
    assert s.api_key_set == {"k-one", "k-two", "k-three", "lone-key"}
    ring = KeyRing(s)
    one, two = auth.identify(request("k-one"), ring), auth.identify(request("k-two"), ring)
    assert one.user == two.user == "alice"
    assert auth.identify(request("k-three"), ring).user == "bob"
    lone = auth.identify(request("lone-key"), ring).user
    assert lone.startswith("k-") and len(lone) == 18 and "lone-key" not in lone


def test_without_keys_every_client_is_the_local_user_and_quotas_go_by_address() -> None:
    caller = auth.identify(request(host="10.0.0.7"), KeyRing(Settings(api_keys="")))
    assert (caller.user, caller.key, caller.client) == (auth.LOCAL_USER, None, "addr:10.0.0.7")


def test_two_keys_of_one_user_share_the_user_but_not_the_quota() -> None:
    ring = KeyRing(Settings(api_keys="alice:k-one,alice:k-two"))
    one, two = auth.identify(request("k-one"), ring), auth.identify(request("k-two"), ring)
    assert one.client != two.client
    assert "k-one" not in one.client  # only a hash of the key
