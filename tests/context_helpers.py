"""A stand-in for the context cache's L3 (the history) in the cache's own tests: the
real L3 is store.history.History, tested against PostgreSQL on its own."""

from __future__ import annotations

from store.records import Exchange


class DictL3:
    """A session's exchanges held in a dict, as the history would return them."""

    def __init__(self, sessions: dict[str, list[Exchange]] | None = None) -> None:
        self.sessions = {} if sessions is None else sessions
        self.reads = 0

    async def exchanges(self, sid: str, limit: int) -> list[Exchange]:
        self.reads += 1
        return self.sessions.get(sid, [])[-limit:]
