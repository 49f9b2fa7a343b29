"""The context cache's own level (L1) and its rules, without Redis."""

from __future__ import annotations

from store.context_cache import KEEP, L1, ContextCache, merged
from store.records import Exchange
from streams.settings import Settings
from tests.context_helpers import DictL3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


NO_REDIS = Settings(redis_url="", redis_cluster_nodes="")


def ex(turn: str, words: str = "hi", reply: str = "hello") -> Exchange:
    return Exchange(turn=turn, user=words, assistant=reply)


def test_the_least_recently_used_session_goes_first_at_the_size_limit() -> None:
    l1 = L1(size=2, ttl_s=60, clock=Clock())
    l1.put("a", "alice", [ex("1")])
    l1.put("b", "bob", [ex("2")])
    assert l1.get("a") == [ex("1")]  # a is now more recent than b
    l1.put("c", "carol", [ex("3")])
    assert len(l1) == 2
    assert l1.get("b") is None
    assert l1.get("a") == [ex("1")]
    assert l1.get("c") == [ex("3")]


def test_an_entry_expires_ttl_after_it_was_written_not_after_it_was_read() -> None:
    clock = Clock()
    l1 = L1(size=10, ttl_s=300, clock=clock)
    l1.put("a", "alice", [ex("1")])
    clock.now += 299
    assert l1.get("a") == [ex("1")]
    clock.now += 1
    assert l1.get("a") is None
    assert len(l1) == 0
    l1.put("a", "alice", [ex("2")])  # writing again starts a new TTL
    clock.now += 299
    assert l1.get("a") == [ex("2")]


def test_drop_user_drops_only_that_users_sessions() -> None:
    l1 = L1(size=10, ttl_s=60, clock=Clock())
    l1.put("a1", "alice", [ex("1")])
    l1.put("a2", "alice", [ex("2")])
    l1.put("b1", "bob", [ex("3")])
    l1.put("a2", "", [ex("2"), ex("4")])  # a write without the user keeps the entry's user
    l1.drop_user("alice")
    assert l1.get("a1") is None and l1.get("a2") is None
    assert l1.get("b1") == [ex("3")]
    l1.drop(["b1", "unknown"])
    assert len(l1) == 0


def test_an_exchange_with_a_known_turn_replaces_it_in_place() -> None:
    before = [ex("1"), ex("2", reply="partial"), ex("3")]
    assert merged(before, [ex("2", reply="whole")]) == [ex("1"), ex("2", reply="whole"), ex("3")]
    assert merged(before, [ex("4")]) == [*before, ex("4")]
    many = [ex(str(i)) for i in range(KEEP)]
    assert merged(many, [ex("new")]) == [*many[1:], ex("new")]


def test_merging_two_views_of_a_session_keeps_every_turn_in_time_order() -> None:
    def at(turn: str, when: float) -> Exchange:
        return Exchange(turn=turn, user="hi", assistant="hello", at=when)

    redis_view = [at("1", 1.0), at("3", 3.0)]  # turn 2 was written while Redis was down
    l1_view = [at("1", 1.0), at("2", 2.0)]
    assert merged(redis_view, l1_view) == [at("1", 1.0), at("2", 2.0), at("3", 3.0)]


async def test_a_redelivered_turn_is_stored_once_without_redis() -> None:
    cache = ContextCache(NO_REDIS, DictL3())
    assert await cache.recent("s", 4, user="alice") == []  # the LLM reads before it writes
    await cache.add("s", "alice", ex("t1", reply="first try"))
    await cache.add("s", "alice", ex("t2"))
    await cache.add("s", "alice", ex("t1", reply="redelivered"))
    assert await cache.recent("s", 10) == [ex("t1", reply="redelivered"), ex("t2")]
    assert await cache.recent("s", 1) == [ex("t2")]
    assert await cache.recent("s", 0) == []
    assert cache.status == "ok" and cache.describe() == "L1 + PostgreSQL"


async def test_a_cold_session_is_read_from_l3_once_then_from_l1() -> None:
    l3 = DictL3({"s": [ex("1"), ex("2"), ex("3")]})
    cache = ContextCache(NO_REDIS, l3)
    assert await cache.recent("s", 2) == [ex("2"), ex("3")]
    assert await cache.recent("s", 5) == [ex("1"), ex("2"), ex("3")]
    assert l3.reads == 1
    await cache.forget(["s"], "alice")
    assert await cache.recent("s", 5) == [ex("1"), ex("2"), ex("3")]
    assert l3.reads == 2
