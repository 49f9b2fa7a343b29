"""API keys act for users (``MORGAN_API_KEYS`` entries ``user:key`` or ``key``)."""

from __future__ import annotations

from starlette.requests import Request

from gateway import auth
from streams.settings import Settings


def request(key: str | None = None, host: str = "10.0.0.7") -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "headers": headers, "query_string": b"", "client": (host, 5000)}
    return Request(scope)


def test_keys_with_a_user_act_for_it_and_keys_without_one_are_their_own_user() -> None:
    s = Settings(api_keys="alice:k-one, alice:k-two,bob:k-three ,lone-key")
    assert s.api_key_users == {"k-one": "alice", "k-two": "alice", "k-three": "bob", "lone-key": ""}
    assert s.api_key_set == {"k-one", "k-two", "k-three", "lone-key"}
    users = s.api_key_users
    assert auth.principal(request("k-one"), users) == auth.principal(request("k-two"), users)
    assert auth.principal(request("k-three"), users) == "bob"
    lone = auth.principal(request("lone-key"), users)
    assert lone.startswith("k-") and len(lone) == 18 and "lone-key" not in lone


def test_without_keys_every_client_is_the_local_user_and_quotas_go_by_address() -> None:
    s = Settings(api_keys="")
    assert auth.principal(request(), s.api_key_users) == auth.LOCAL_USER
    assert auth.client_of(request(host="10.0.0.7"), s.api_key_set) == "addr:10.0.0.7"


def test_two_keys_of_one_user_share_the_user_but_not_the_quota() -> None:
    s = Settings(api_keys="alice:k-one,alice:k-two")
    one, two = request("k-one"), request("k-two")
    assert auth.client_of(one, s.api_key_set) != auth.client_of(two, s.api_key_set)
    assert "k-one" not in auth.client_of(one, s.api_key_set)  # only a hash of the key
