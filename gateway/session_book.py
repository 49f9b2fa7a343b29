"""Who may continue a session (the user who opened it, holding its resume secret), and
single-use tickets that open one (``POST /api/session``, then ``/ws?ticket=``).

A session id is no secret (it names consumers, subjects and KV keys any operator
sees), so continuing a session (a WebSocket resume, or ``session_id`` on
``POST /api/text``) takes two more things: the resume token handed out once with
the new session (or reissued for a conversation of the user's history), and a key
of the user who opened it (``auth.Caller.user``). The book keeps, per
session, a hash of each in the NATS KV bucket ``MORGAN_SESSIONS``, so any
gateway can check a resume; entries live as long as the session's events.
A wrong token, another user's session and an unknown id get the same answer.

A ticket stands for an API key for ``TICKET_TTL_S``, once: a browser fetches it with
the key in a header and opens the WebSocket with it, so the key is in no URL. The book
keeps ``ticket.<sha256 of the ticket>`` -> the key's hash and the expiry time (in the
same bucket, so a ticket from one gateway opens a socket on any); using it marks it
used by a compare-and-set on its revision, so two sockets racing with one ticket get
one session. Unused tickets leave with the bucket's TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gateway.protocol import ProtocolError
from streams import definitions
from streams.settings import Settings

BUCKET = definitions.SESSIONS
TOKEN_BYTES = 24
"""Entropy of a resume token (32 URL-safe characters)."""
TICKET_TTL_S = 30.0
"""How long a ticket from ``POST /api/session`` opens a WebSocket, seconds."""
_TICKET = re.compile(r"[A-Za-z0-9_-]{32}")


class BadTicket(Exception):
    """A ticket that is malformed, unknown, used or past its time (one answer for all)."""

    def __init__(self) -> None:
        super().__init__(
            "the ticket is unknown, used or expired: get a new one (POST /api/session)"
        )


def unknown_session() -> ProtocolError:
    return ProtocolError(
        "unknown_session", "no session with this id and resume token for this API key's user"
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionBook:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> SessionBook:
        return cls(await definitions.key_value(js, settings, definitions.SESSIONS))

    async def new_session(self, sid: str, principal: str) -> str:
        """Record a new session for ``principal``; returns its resume token."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        entry = {"owner": principal, "token": _digest(token)}
        await self.kv.create(sid, json.dumps(entry).encode())
        return token

    async def reissue(self, sid: str, principal: str) -> str:
        """A new resume token for ``principal``'s session ``sid`` (the caller checked that
        it is theirs, e.g. in the history); the old token stops working."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        entry = {"owner": principal, "token": _digest(token)}
        await self.kv.put(sid, json.dumps(entry).encode())
        return token

    async def new_ticket(self, key: str | None, ttl_s: float = TICKET_TTL_S) -> str:
        """A single-use ticket for the key with hash ``key`` (None: a gateway without keys)."""
        ticket = secrets.token_urlsafe(TOKEN_BYTES)
        entry = {"key": key, "expires": time.time() + ttl_s}
        await self.kv.create(_ticket_key(ticket), json.dumps(entry).encode())
        return ticket

    async def use_ticket(self, ticket: str) -> str | None:
        """Spend ``ticket``: the hash of the key it stands for, or ``BadTicket``."""
        if not _TICKET.fullmatch(ticket):
            raise BadTicket()
        name = _ticket_key(ticket)
        try:
            entry = await self.kv.get(name)
            record = json.loads(entry.value or b"")
            key, expires = record["key"], float(record["expires"])
        except (KeyNotFoundError, ValueError, KeyError, TypeError):
            raise BadTicket() from None
        if record.get("used") or time.time() >= expires or not isinstance(key, str | None):
            raise BadTicket()
        try:
            used = json.dumps({**record, "used": True}).encode()
            await self.kv.update(name, used, last=entry.revision)
        except KeyWrongLastSequenceError:  # another socket spent it first
            raise BadTicket() from None
        return key

    async def check(self, sid: str, token: str, principal: str) -> None:
        """Let ``principal`` continue ``sid`` with ``token``, or raise ``unknown_session``."""
        try:
            entry = await self.kv.get(sid)
        except KeyNotFoundError:
            raise unknown_session() from None
        try:
            record = json.loads(entry.value or b"")
            owner, digest = str(record["owner"]), str(record["token"])
        except (ValueError, KeyError, TypeError):
            raise unknown_session() from None
        same_owner = hmac.compare_digest(owner, principal)
        same_token = hmac.compare_digest(digest, _digest(token))
        if not (same_owner and same_token):
            raise unknown_session()


def _ticket_key(ticket: str) -> str:
    return "ticket." + _digest(ticket)
